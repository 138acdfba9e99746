"""`alignjax convert` both ways with Cloud Storage on each side (a GCS JSON API server on
127.0.0.1, tests/gcs_emulator.py): bit-identical tensors, sharded output with its index, the
tokenizer carried along, and transformers loading the result."""

import os
import subprocess
import sys
import uuid

import numpy as np
import pytest
import torch
import transformers

from alignjax.core import paths
from alignjax.convert.safetensors_io import INDEX_FILE, iter_tensors
from gcs_emulator import upload_dir
from hf_models import build_hf_model


def _cli(*args):
    # The child inherits this process's environment, the emulator's endpoints included.
    return subprocess.run(
        [sys.executable, "-m", "alignjax.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        env=os.environ,
    )


@pytest.mark.slow
def test_convert_from_and_to_a_bucket(gcs, tmp_path):
    from test_roundtrip import _tokenizer

    src = tmp_path / "hf"
    model = build_hf_model("llama3", str(src))
    _tokenizer(str(src))
    prefix = f"{gcs}/convert-{uuid.uuid4().hex[:8]}"
    remote_src = upload_dir(str(src), f"{prefix}/hf")

    first = _cli("convert", "hf-to-orbax", remote_src, f"{prefix}/ckpt")
    assert first.returncode == 0, first.stderr[-3000:]
    assert paths.exists(f"{prefix}/ckpt/0/commit_success.txt")  # Orbax's commit on a bucket
    assert paths.exists(f"{prefix}/ckpt/tokenizer/tokenizer.json")
    # Small shards, so the sharded writer and its index go through the bucket too.
    second = _cli("convert", "orbax-to-hf", f"{prefix}/ckpt", f"{prefix}/out", "--max-shard-gb", "0.00005")
    assert second.returncode == 0, second.stderr[-3000:]

    written = paths.listdir(f"{prefix}/out")
    assert INDEX_FILE in written and not [n for n in written if n.endswith(".tmp")], written
    assert {"config.json", "generation_config.json", "tokenizer.json"} <= set(written)
    expected = {name: np.asarray(a) for name, a in iter_tensors(str(src))}
    actual = {name: np.asarray(a) for name, a in iter_tensors(f"{prefix}/out")}  # ranged reads
    assert sorted(actual) == sorted(expected)
    for name, array in expected.items():
        assert actual[name].dtype == array.dtype and np.array_equal(actual[name], array), name

    local = paths.local_copy(f"{prefix}/out")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        local,
        dtype=torch.float32,
        attn_implementation="eager",  # as the source model was built
    ).eval()
    ids = torch.tensor([[1, 5, 9, 3, 7, 2]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=0, atol=1e-6)
    assert transformers.AutoTokenizer.from_pretrained(local)("abc")["input_ids"]


def test_a_missing_bucket_path_is_named(gcs):
    missing = _cli("convert", "orbax-to-hf", f"{gcs}/nowhere", f"{gcs}/out")
    assert missing.returncode == 2 and f"{gcs}/nowhere: no such checkpoint directory" in missing.stderr
