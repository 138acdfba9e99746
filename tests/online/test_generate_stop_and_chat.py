"""Stop ids from generation_config.json and `alignjax generate`'s chat rendering, against
transformers' greedy `generate` + `decode(skip_special_tokens=True)` on a tiny Gemma-3-style
model: texts equal, an ordinary stop token kept in them as transformers keeps it."""

import json
import os
import shutil
import types

import pytest
import torch
import yaml

from alignjax import cli
from alignjax.data.byte_tokenizer import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE, make_byte_tokenizer
from alignjax.generation.stop_ids import response_text, stop_ids
from hf_models import build_hf_model

END_ID = 262  # the byte tokenizer's <|end|>: its end of turn, as <end_of_turn> is Gemma 3's
PROMPT = "Tell me about the kettle."
MAX_NEW = 16


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    """A random Gemma 3 over the byte tokenizer, which here adds BOS on encode as Gemma's does
    (its chat template writes BOS itself). Untied: tied random embeddings make greedy decoding
    repeat one token, so a stop id could not cut an answer short."""
    from tokenizers import processors

    path = str(tmp_path_factory.mktemp("gemma3_chat"))
    build_hf_model(
        "gemma3",
        path,
        tie_word_embeddings=False,
        vocab_size=VOCAB_SIZE,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )
    tokenizer = make_byte_tokenizer()
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", BOS_ID)]
    )
    tokenizer.save_pretrained(path)
    return path


def _with_stop_ids(src: str, dst: str, eos_ids: list[int]) -> str:
    """A copy of the model directory whose generation_config.json stops at `eos_ids`."""
    shutil.copytree(src, dst)
    path = os.path.join(dst, "generation_config.json")
    with open(path) as f:
        config = json.load(f)
    with open(path, "w") as f:
        json.dump({**config, "eos_token_id": eos_ids}, f)
    return dst


def _tokenizer(hf_dir):
    import transformers

    return transformers.AutoTokenizer.from_pretrained(hf_dir)


def _hf_greedy(hf_dir: str, ids: list[int]) -> list[int]:
    """transformers' greedy continuation; it reads the stop ids from generation_config.json."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        hf_dir, dtype=torch.float32, attn_implementation="eager"
    )
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=MAX_NEW,
            do_sample=False,
        )
    return out[0, len(ids) :].tolist()


def _hf_text(hf_dir: str, new_ids: list[int]) -> str:
    """The answer as transformers returns it: special tokens dropped, ordinary ones kept."""
    return _tokenizer(hf_dir).decode(new_ids, skip_special_tokens=True)


def _ordinary_stop(free: list[int]) -> int:
    """Where the model first emits a printable byte a few tokens in: as an extra stop id, that
    ordinary token cuts the answer there and ends the text."""
    return next(i for i in range(2, len(free)) if free[i] not in free[:i] and 32 < free[i] < 127)


def _cli(capsys, *argv: str) -> str:
    capsys.readouterr()
    assert cli.main(["generate", *argv, "--max-new-tokens", str(MAX_NEW)]) == 0
    return capsys.readouterr().out


def test_generate_stops_at_generation_config_ids(gemma_dir, tmp_path, capsys):
    ids = _tokenizer(gemma_dir)(PROMPT)["input_ids"]
    assert ids[0] == BOS_ID
    free = _hf_greedy(gemma_dir, ids)
    assert EOS_ID not in free[:3]
    stop_at = _ordinary_stop(free)
    extra = free[stop_at]
    stop_dir = _with_stop_ids(gemma_dir, str(tmp_path / "stop"), [EOS_ID, extra])

    stopped = _hf_greedy(stop_dir, ids)
    assert stopped == free[: stop_at + 1]
    expected = _hf_text(stop_dir, stopped)
    assert expected.endswith(chr(extra))  # transformers keeps the ordinary stop token
    assert _cli(capsys, stop_dir, "--raw", "--prompt", PROMPT) == expected + "\n"
    # Without the extra id both go on: the stop above came from generation_config.json.
    longer = _cli(capsys, gemma_dir, "--raw", "--prompt", PROMPT)
    assert longer == _hf_text(gemma_dir, free) + "\n"
    assert len(longer) > len(_hf_text(stop_dir, stopped)) + 1


def test_online_rollout_texts_keep_an_ordinary_stop_token(gemma_dir, tmp_path):
    """The texts rewards and judges score are transformers' texts of the same greedy answers."""
    from alignjax.data.config import DataConfig
    from alignjax.generation.policy import load_policy
    from alignjax.generation.responses import sampling_config
    from alignjax.online.rollout import Roller

    data_cfg = DataConfig(record_type="prompt", max_length=64, max_prompt_length=48)
    records = [{"prompt": PROMPT}]
    ids = Roller(data_cfg, _tokenizer(gemma_dir), None, None, seed=0).prompt_ids(records)[0]
    free = _hf_greedy(gemma_dir, ids)
    extra = free[_ordinary_stop(free)]
    stop_dir = _with_stop_ids(gemma_dir, str(tmp_path / "stop"), [EOS_ID, extra])
    expected = _hf_text(stop_dir, _hf_greedy(stop_dir, ids))
    assert expected.endswith(chr(extra))

    policy = load_policy(stop_dir)
    greedy = sampling_config(policy, max_new_tokens=MAX_NEW, temperature=0.0)
    roller = Roller(data_cfg, policy.tokenizer, policy.cfg, greedy, seed=0)
    rollout = roller.sample(policy.params, records, num_samples=1, draw=0)
    assert rollout.texts == [expected]
    assert rollout.hit_eos.tolist() == [True]


def test_response_text_drops_special_stop_tokens_and_keeps_ordinary_ones():
    tokenizer = make_byte_tokenizer()
    hi = list(b"hi")
    assert response_text(tokenizer, [*hi, EOS_ID]) == "hi"
    assert response_text(tokenizer, [*hi, END_ID]) == "hi"  # <|end|>: special, as Gemma's <end_of_turn>
    assert response_text(tokenizer, [*hi, ord(".")]) == "hi."
    assert response_text(tokenizer, [*hi, ord("."), PAD_ID]) == "hi."


def test_converted_checkpoint_keeps_the_generation_config_stop_ids(gemma_dir, tmp_path):
    from alignjax.convert.api import hf_to_orbax
    from alignjax.generation.policy import load_policy

    stop_dir = _with_stop_ids(gemma_dir, str(tmp_path / "stop"), [EOS_ID, END_ID])
    ckpt = hf_to_orbax(stop_dir, str(tmp_path / "ckpt"))
    for source in (stop_dir, ckpt):
        assert load_policy(source).eos_ids == (EOS_ID, END_ID)


def test_generate_renders_a_user_turn_by_default_and_raw_on_request(gemma_dir, capsys):
    tokenizer = _tokenizer(gemma_dir)
    chat_ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}], add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    raw_ids = tokenizer(PROMPT)["input_ids"]
    assert chat_ids[:2] == [BOS_ID, BOS_ID + 3]  # the template's own BOS, then <|user|>
    chat_expected = _hf_text(gemma_dir, _hf_greedy(gemma_dir, chat_ids))
    raw_expected = _hf_text(gemma_dir, _hf_greedy(gemma_dir, raw_ids))
    assert chat_expected != raw_expected  # so each comparison below tells the renderings apart

    assert _cli(capsys, gemma_dir, "--prompt", PROMPT) == chat_expected + "\n"
    assert _cli(capsys, gemma_dir, "--raw", "--prompt", PROMPT) == raw_expected + "\n"


def test_raw_refuses_conditioning_that_needs_chat_messages(gemma_dir, capsys):
    code = cli.main(["generate", gemma_dir, "--raw", "--prompt", "hi", "--system", "Be brief."])
    assert code == 2
    assert "--raw sends the prompt as plain text, but --system" in capsys.readouterr().err


def test_generate_is_greedy_by_default_and_eval_samples():
    from alignjax.commands import eval as eval_cmd
    from alignjax.commands import generate as generate_cmd

    assert generate_cmd.build_parser().parse_args(["m", "--prompt", "p"]).temperature == 0.0
    assert eval_cmd.build_parser().parse_args(["m", "--out", "o"]).temperature == 1.0


def _ids(tokenizer_eos, model_eos, generation_config):
    return stop_ids(
        types.SimpleNamespace(eos_token_id=tokenizer_eos),
        types.SimpleNamespace(eos_token_id=model_eos),
        generation_config,
    )


def test_stop_ids_union_in_order_each_once():
    # Gemma 3: generation config [<eos>, <end_of_turn>], config.json and tokenizer <eos>.
    assert _ids(1, 1, {"eos_token_id": [1, 106]}) == (1, 106)
    # Llama 3.1 Instruct: the tokenizer's <|eot_id|> is last in the generation config's list.
    llama = (128001, 128008, 128009)
    assert _ids(128009, llama, {"eos_token_id": list(llama)}) == llama
    # An int generation config comes first; config.json's tuple and the tokenizer follow.
    assert _ids(7, (5, 3), {"eos_token_id": 3}) == (3, 5, 7)
    # No generation config, or one without eos_token_id: config.json then the tokenizer.
    assert _ids(2, 4, None) == (4, 2)
    assert _ids(2, None, {"bos_token_id": 1}) == (2,)
    assert _ids(None, None, {"eos_token_id": None}) == ()


def test_stop_ids_refuse_what_is_not_a_token_id():
    with pytest.raises(ValueError, match="generation_config.json eos_token_id is '2'"):
        _ids(2, 2, {"eos_token_id": "2"})


def _online_config(tmp_path, hf_dir: str, loss: dict) -> str:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Say something about {w}."}) + "\n" for w in "abcd"))
    config = {
        "run_dir": str(tmp_path / "run"),
        "model": {"hf_path": hf_dir},
        "data": {
            "train": str(prompts),
            "max_length": 64,
            "max_prompt_length": 48,
            "templates": {"weights": "Weights: short {short:.0%}, long {long:.0%}."},
        },
        "loss": loss,
        "train": {"batch_size": 2, "steps": 1},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.parametrize(
    "loss",
    [
        {
            "type": "mo_odpo",
            "mo_odpo": {
                "rewards": [{"name": "length", "unit": "chars"}, {"name": "length", "unit": "words"}],
                "max_new_tokens": 4,
            },
        },
        {
            "type": "cut",
            "cut": {
                "judge": {
                    "name": "threshold",
                    "reward": {"name": "length"},
                    "threshold": 6,
                    "critique": "No.",
                },
                "sampling": {"max_new_tokens": 4},
            },
        },
    ],
    ids=["mo_odpo", "online_cut"],
)
def test_online_samplers_stop_at_generation_config_ids(gemma_dir, tmp_path, loss):
    from alignjax.train.bootstrap import bootstrap
    from alignjax.train.config import load_config, stages
    from alignjax.train.datasets import stage_data
    from alignjax.train.stage import open_train_source

    stop_dir = _with_stop_ids(gemma_dir, str(tmp_path / "stop"), [EOS_ID, END_ID])
    cfg = load_config(_online_config(tmp_path, stop_dir, loss))
    run = bootstrap(cfg)
    stage = stages(cfg)[0]
    source = open_train_source(run, stage, 0, stage_data(stage, 0, run.data_dir, cfg.run_dir))
    try:
        assert source.roller.sampling.eos_ids == (EOS_ID, END_ID)
    finally:
        source.close()
