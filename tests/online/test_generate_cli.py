"""`alignjax generate` against the sampler on prompt ids rendered by hand, and soft tokens
against a full forward pass with `ExtraEmbeddings`."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alignjax.data.byte_tokenizer import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE, make_byte_tokenizer
from alignjax.models import decoder, head
from alignjax.commands import generate as generate_cmd
from alignjax.generation import responses, sampler, soft_prompt
from alignjax.generation.logit_filters import SamplingConfig
from alignjax.generation.policy import load_policy
from hf_models import FAMILY_CONFIGS

SYSTEM_ID, USER_ID, ASSISTANT_ID, END_ID = 259, 260, 261, 262  # byte_tokenizer.SPECIAL_TOKENS order
# Templates unlike the defaults, so a test passes only if the run config is read.
RUN_CONFIG = """\
model: {preset: tiny}
data:
  templates:
    system: "[{system}]"
    user_info: "{user_info} / {prompt}"
    weights: "Be {helpful:.0%} helpful and {harmless:.0%} harmless."
"""


def build_checkpoint(root: str, family: str = "llama2") -> dict[str, str]:
    """A random tiny model over the byte tokenizer: HF directory, converted checkpoint, config."""
    import torch
    import transformers

    from alignjax.convert.api import hf_to_orbax

    hf_dir, ckpt_dir = os.path.join(root, "hf"), os.path.join(root, "ckpt")
    cfg = dict(
        FAMILY_CONFIGS[family],
        vocab_size=VOCAB_SIZE,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    config = transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.3 + 1.0) if "norm" in name else p.normal_(0.0, 0.15)
    model.save_pretrained(hf_dir)
    make_byte_tokenizer().save_pretrained(hf_dir)
    hf_to_orbax(hf_dir, ckpt_dir)
    config_path = os.path.join(root, "run.yaml")
    with open(config_path, "w") as f:
        f.write(RUN_CONFIG)
    return {"hf": hf_dir, "ckpt": ckpt_dir, "config": config_path}


@pytest.fixture(scope="session")
def byte_model(tmp_path_factory):
    return build_checkpoint(str(tmp_path_factory.mktemp("byte_model")))


def hand_rendered(system: str, user: str) -> list[int]:
    """The byte chat template written out: BOS, system, user, generation prompt."""
    return [BOS_ID, SYSTEM_ID, *system.encode(), END_ID, USER_ID, *user.encode(), END_ID, ASSISTANT_ID]


def _reference_text(policy, ids, max_new_tokens):
    greedy = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0, eos_ids=(EOS_ID,), pad_id=PAD_ID)
    out = sampler.generate(policy.params, policy.cfg, greedy, [ids], jax.random.key(0))[0]
    out = out[:-1] if out and out[-1] == EOS_ID else out
    return policy.tokenizer.decode(out, skip_special_tokens=True)


def test_greedy_cli_matches_sampler_on_hand_rendered_prompt(byte_model, capsys):
    policy = load_policy(byte_model["ckpt"])
    ids = hand_rendered("[Be brief.]", "I like cats / Tell me about the kettle.")
    expected = _reference_text(policy, ids, 24)
    code = generate_cmd.main(
        [
            byte_model["ckpt"],
            "--config",
            byte_model["config"],
            "--system",
            "Be brief.",
            "--user-info",
            "I like cats",
            "--prompt",
            "Tell me about the kettle.",
            "--temperature",
            "0",
            "--max-new-tokens",
            "24",
        ]
    )
    assert code == 0
    assert capsys.readouterr().out == expected + "\n"
    assert expected  # a random model must still say something for the comparison to mean anything


def test_generate_texts_weights_and_hf_directory(byte_model):
    """MO-ODPO weights go into the system message; an HF directory loads like the checkpoint."""
    ids = hand_rendered("Be 30% helpful and 70% harmless.", "Hi there")
    sampling = SamplingConfig(max_new_tokens=16, temperature=0.0, eos_ids=(EOS_ID,), pad_id=PAD_ID)
    record = {"prompt": "Hi there", "weights": responses.parse_weights("helpful=0.3,harmless=0.7")}
    args = generate_cmd.build_parser().parse_args(["x", "--prompt", "p", "--config", byte_model["config"]])
    for source in ("ckpt", "hf"):
        policy = load_policy(byte_model[source])
        renderer = generate_cmd.renderer_for(policy, args)
        assert renderer.render(record).ids.tolist() == ids
        texts = responses.generate_texts(
            policy, renderer, [record, record], sampling, num_samples=2, batch_size=3
        )
        assert texts == [[_reference_text(policy, ids, 16)] * 2] * 2


@pytest.mark.parametrize("text", ["helpful", "helpful=x", "helpful=-1", "=0.5", "a=0.5,b"])
def test_bad_weights_string_is_explained(byte_model, capsys, text):
    code = generate_cmd.main([byte_model["ckpt"], "--prompt", "hi", "--weights", text])
    err = capsys.readouterr().err
    assert code == 2
    assert f"--weights {text!r}" in err and "helpful=0.3,harmless=0.7" in err


def test_missing_model_directory_is_explained(tmp_path, capsys):
    assert generate_cmd.main([str(tmp_path / "nope"), "--prompt", "hi"]) == 2
    assert "no such run, checkpoint or Hugging Face directory" in capsys.readouterr().err


def _full_forward_greedy(params, cfg, prompt, slot_start, embeds_TxD, steps):
    """Greedy decoding by re-running the whole sequence with ExtraEmbeddings each step.

    Rows are right-padded to one length (causal attention: padding after the last real
    token changes nothing before it), so the forward compiles once.
    """
    length = len(prompt) + steps
    index_1xT = jnp.asarray(slot_start + np.arange(embeds_TxD.shape[0]))[None]

    @jax.jit
    def logits_1xLxV(tokens_1xL):
        extra = decoder.ExtraEmbeddings(embeds_TxD[None], index_1xT)
        hidden = decoder.apply(
            params, cfg, tokens_1xL, jnp.arange(length)[None], jnp.ones((1, length), jnp.int32), extra
        )
        return head.logits_BxLxV(params, cfg, hidden)

    tokens = list(prompt)
    for _ in range(steps):
        n = len(tokens)
        padded = np.zeros((1, length), np.int32)
        padded[0, :n] = tokens
        tokens.append(int(jnp.argmax(logits_1xLxV(padded)[0, n - 1])))
    return tokens[len(prompt) :]


@pytest.mark.parametrize("family", ["llama2", "llama3"])  # untied and tied embeddings
def test_soft_token_generation_matches_full_forward(tiny_family, family):
    _, _, cfg, params = tiny_family(family)
    rng = np.random.default_rng(0)
    n_slots, steps = 3, 6
    prompts = [[1, 0, 0, 0, *rng.integers(3, 96, 5)], [1, 0, 0, 0, *rng.integers(3, 96, 9)]]
    embeds_BxTxD = jnp.asarray(rng.normal(0, 1.0, (2, n_slots, cfg.hidden_size)), jnp.float32)
    greedy = SamplingConfig(max_new_tokens=steps, temperature=0.0, eos_ids=(), pad_id=0)
    ours = soft_prompt.generate_with_soft_tokens(
        params, cfg, greedy, prompts, [1, 1], embeds_BxTxD, jax.random.key(0)
    )
    for b, prompt in enumerate(prompts):
        assert ours[b] == _full_forward_greedy(params, cfg, prompt, 1, embeds_BxTxD[b], steps)
    plain = sampler.generate(params, cfg, greedy, prompts, jax.random.key(0))
    assert ours != plain  # the soft tokens matter, so the comparison above tests them
