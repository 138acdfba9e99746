"""`dot_product` attention in bfloat16 on an NVIDIA GPU, where JAX may pick cuDNN's kernel,
against the float32 XLA reference: values and gradients, a left-padded row and a packed one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_attention import _inputs, _loss

pytestmark = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs an NVIDIA GPU")


@pytest.mark.parametrize("window", [None, 7])
def test_dot_product_bf16_equals_reference_on_gpu(window):
    q, k, v, kw, valid = _inputs()
    q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
    # The reference sees the same bf16-rounded inputs, computed in float32.
    ref_val, ref_grads = _loss("xla", window, None, kw, valid)(*(x.astype(jnp.float32) for x in (q, k, v)))
    val, grads = _loss("dot_product", window, None, kw, valid)(q, k, v)
    np.testing.assert_allclose(np.float32(val), np.float32(ref_val), rtol=2e-2)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(np.float32(g), np.float32(r), atol=5e-2, rtol=5e-2)
