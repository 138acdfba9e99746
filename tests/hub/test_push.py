"""Results back to the Hub: `convert orbax-to-hf --push-to-hub` and `logging.push_to_hub`,
read back through transformers and peft as a user would, from the server on 127.0.0.1."""

import json
import os
import subprocess
import sys

import pytest
from hub_helpers import run_config, train, upload, write_pairs

from alignjax import cli

pytest.importorskip("peft")

# Loads each REPO@REVISION through transformers (HF_ENDPOINT is the loopback Hub) and the
# local export, and prints per repository how many tensors are bit-for-bit equal, of how many.
_SAME_WEIGHTS = """
import sys, torch, transformers
local = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1]).state_dict()
for spec in sys.argv[2:]:
    repo, _, revision = spec.partition("@")
    pushed = transformers.AutoModelForCausalLM.from_pretrained(repo, revision=revision or None).state_dict()
    assert pushed.keys() == local.keys(), (sorted(pushed), sorted(local))
    print(spec, sum(torch.equal(pushed[k], local[k]) for k in local), len(local))
"""

# The pushed adapter on the pushed-to base, by name, against the merged export: the logits
# of one sequence, as the largest absolute difference.
_ADAPTER_LOGITS = """
import sys, torch, transformers, peft
base = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], revision=sys.argv[2])
adapted = peft.PeftModel.from_pretrained(base, sys.argv[3])
merged = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[4])
ids = torch.tensor([[1, 5, 9, 14, 20, 33, 47, 60]])
with torch.no_grad():
    print(float((adapted(ids).logits - merged(ids).logits).abs().max()))
"""


def _python(code: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], check=False, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout.strip()


def test_a_pushed_export_loads_through_transformers_bit_for_bit(hub, tiny_model, tmp_path, token):
    commit = upload(tiny_model, "org/tiny")
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    tree = run_config(tmp_path / "run", {"hf_path": "org/tiny"}, pairs, logging={"push_to_hub": "org/at-end"})
    assert train(tree) == 0  # pushes org/at-end when it ends
    out = tmp_path / "export"
    assert (
        cli.main(
            [
                "convert",
                "orbax-to-hf",
                str(tmp_path / "run" / "checkpoints"),
                str(out),
                "--push-to-hub",
                "org/out",
            ]
        )
        == 0
    )

    card = (out / "README.md").read_text()
    pushed = hub.repos[("model", "org/out")].at("main").files
    assert pushed["README.md"].decode() == card
    assert set(os.listdir(out)) == set(pushed) - {".gitattributes"}
    assert "base_model: org/tiny" in card and "- sigmoid" in card  # the metadata block
    assert f"from `org/tiny` at commit `{commit}`" in card
    assert "### Training (step 2)" in card and "| loss |" in card
    with open(tmp_path / "run" / "config.yaml") as f:
        assert f"```yaml\n{f.read().rstrip()}\n```" in card

    # A private repository, on a branch of its own.
    args = ["--push-to-hub", "org/private-out", "--private", "--revision", "candidate"]
    assert (
        cli.main(
            ["convert", "orbax-to-hf", str(tmp_path / "run" / "checkpoints"), str(tmp_path / "e2"), *args]
        )
        == 0
    )
    repo = hub.repos[("model", "org/private-out")]
    assert repo.private and "model.safetensors" in repo.at("candidate").files
    assert "model.safetensors" not in repo.at("main").files

    report = _python(_SAME_WEIGHTS, str(out), "org/out", "org/at-end", "org/private-out@candidate")
    for line in report.splitlines():
        _, equal, total = line.split()
        assert int(equal) == int(total) > 0, report
    assert len(report.splitlines()) == 3, report


def test_a_pushed_peft_adapter_loads_with_peft(hub, tiny_model, tmp_path, token):
    commit = upload(tiny_model, "org/tiny")
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    tree = run_config(tmp_path / "run", {"hf_path": "org/tiny", "lora": {"rank": 4, "alpha": 8}}, pairs)
    assert train(tree) == 0
    ckpt = str(tmp_path / "run" / "checkpoints")
    assert (
        cli.main(["convert", "orbax-to-hf", ckpt, str(tmp_path / "adapter"), "--push-to-hub", "org/adapter"])
        == 0
    )
    assert cli.main(["convert", "orbax-to-hf", ckpt, str(tmp_path / "merged"), "--merge"]) == 0

    pushed = hub.repos[("model", "org/adapter")].at("main").files
    assert json.loads(pushed["adapter_config.json"])["base_model_name_or_path"] == "org/tiny"
    card = pushed["README.md"].decode()
    assert "library_name: peft" in card and f'revision="{commit}"' in card
    difference = float(_python(_ADAPTER_LOGITS, "org/tiny", commit, "org/adapter", str(tmp_path / "merged")))
    assert difference < 1e-5
