"""Golden rows for each conditioning field: MetaAlign system/user_info, MO-ODPO weights,
P-DPO user ids and slots, CUT views, SparsePO token weights."""

import json

import numpy as np
import pytest
from datatest_helpers import one_batch, row, run, write_jsonl
from datatest_tokenizers import llama_ids

from alignjax.data.config import DataConfig, TemplateConfig
from alignjax.data.vocab import Vocab

BOS, EOS, PAD = 257, 258, 256
ASSISTANT_HEADER = ("<|start_header_id|>", "assistant", "<|end_header_id|>", "\n", "\n")
WEIGHTS_TEMPLATE = "Answer so that your response is {helpful:.0%} helpful, {harmless:.0%} harmless"


def test_metaalign_three_tiers(tmp_path, llama_tok):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {
                "system": "Be brief",
                "user_info": "Alice likes cats",
                "prompt": "Hi",
                "chosen": "yes",
                "rejected": "no",
            }
        ],
    )
    b = one_batch(path, llama_tok, max_length=64, max_prompt_length=48, buckets=[64])
    prompt = llama_ids(
        "<|begin_of_text|>",
        "<|start_header_id|>",
        "system",
        "<|end_header_id|>",
        "\n",
        "\n",
        "Be",
        "brief",
        "<|eot_id|>",
        "<|start_header_id|>",
        "user",
        "<|end_header_id|>",
        "\n",
        "\n",
        "User",
        "information",
        ":",
        "\n",
        "Alice",
        "likes",
        "cats",
        "\n",
        "\n",
        "Query",
        ":",
        "\n",
        "Hi",
        "<|eot_id|>",
        *ASSISTANT_HEADER,
    )
    assert row(b, 0) == (prompt + llama_ids("yes", "<|eot_id|>"), [0] * len(prompt) + [1, 1])
    assert row(b, 1) == (prompt + llama_ids("no", "<|eot_id|>"), [0] * len(prompt) + [1, 1])


def test_metaalign_system_merges_with_existing_system_message(tmp_path, byte_tok):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {
                "system": "A",
                "prompt": [{"role": "system", "content": "B"}, {"role": "user", "content": "q"}],
                "chosen": "y",
                "rejected": "n",
            }
        ],
    )
    b = one_batch(path, byte_tok, max_length=32, max_prompt_length=24, buckets=[32])
    sys_, usr, end, ast = 259, 260, 262, 261
    expected = [BOS, sys_, *b"A\n\nB", end, usr, ord("q"), end, ast, ord("y"), EOS]
    assert row(b, 0)[0] == expected


def test_mo_odpo_weights_in_system_prompt(tmp_path, llama_tok):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {
                "weights": {"helpful": 0.3, "harmless": 0.7},
                "prompt": "Hi",
                "chosen": "yes",
                "rejected": "no",
            }
        ],
    )
    b = one_batch(
        path,
        llama_tok,
        max_length=64,
        max_prompt_length=48,
        buckets=[64],
        templates=TemplateConfig(weights=WEIGHTS_TEMPLATE),
    )
    prompt = llama_ids(
        "<|begin_of_text|>",
        "<|start_header_id|>",
        "system",
        "<|end_header_id|>",
        "\n",
        "\n",
        "Answer",
        "so",
        "that",
        "your",
        "response",
        "is",
        "30",
        "%",
        "helpful",
        ",",
        "70",
        "%",
        "harmless",
        "<|eot_id|>",
        "<|start_header_id|>",
        "user",
        "<|end_header_id|>",
        "\n",
        "\n",
        "Hi",
        "<|eot_id|>",
        *ASSISTANT_HEADER,
    )
    assert row(b, 0) == (prompt + llama_ids("yes", "<|eot_id|>"), [0] * len(prompt) + [1, 1])


def test_mo_odpo_prompt_batch_is_left_padded_with_weights(tmp_path, byte_tok):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"prompt": "Hi", "weights": {"h": 1, "s": 0}},
            {"prompt": "Hello", "weights": {"h": 0.25, "s": 0.75}},
        ],
    )
    b = one_batch(
        path,
        byte_tok,
        record_type="prompt",
        batch_size=2,
        max_length=32,
        max_prompt_length=24,
        buckets=[32],
        templates=TemplateConfig(weights="{h:.2f}/{s:.2f}"),
    )
    sys_, usr, end, ast = 259, 260, 262, 261
    first = [BOS, sys_, *b"1.00/0.00", end, usr, *b"Hi", end, ast]
    assert b.tokens_BxL[0, 32 - len(first) :].tolist() == first
    assert b.tokens_BxL[0, : 32 - len(first)].tolist() == [PAD] * (32 - len(first))
    assert b.unconditioned_tokens_BxL[0, -6:].tolist() == [BOS, usr, *b"Hi", end, ast]
    np.testing.assert_allclose(b.objective_weights_BxK, [[1, 0], [0.25, 0.75]])
    assert b.positions_BxL[0, -1] == len(first) - 1 and b.positions_BxL[0, 0] == 0
    assert json.loads(b.prompts[1]) == "Hello"


def test_mo_odpo_wrong_objectives_are_bad_records(tmp_path, byte_tok):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"prompt": "Hi", "chosen": "y", "rejected": "n", "weights": {"helpful": 1}},
            {
                "prompt": "Hi",
                "chosen": "y",
                "rejected": "n",
                "weights": {"helpful": -1, "harmless": 2},
            },
            {
                "prompt": "Hi",
                "chosen": "y",
                "rejected": "n",
                "weights": {"helpful": 0.5, "harmless": 0.5},
            },
        ],
    )
    cfg = DataConfig(
        sources=[{"path": path}],
        max_length=128,
        max_prompt_length=100,
        batch_size=4,
        on_bad_record="skip",
        templates={"weights": WEIGHTS_TEMPLATE},
    )
    batches, p = run(cfg, byte_tok)
    assert p.skipped_counts() == {"bad_weights": 2}
    assert int(batches[0].pair_valid_P.sum()) == 1


def test_pdpo_user_index_slots_and_vocab(tmp_path, byte_tok):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"prompt": "Hi", "chosen": "Yo", "rejected": "No", "user_id": "bob"},
            {"prompt": "Hi", "chosen": "Yo", "rejected": "No", "user_id": 7},
            {"prompt": "Hi", "chosen": "Yo", "rejected": "No", "user_id": "alice"},
            {"prompt": "Hi", "chosen": "Yo", "rejected": "No"},
        ],
    )
    vocab_path = str(tmp_path / "run" / "users.json")
    b = one_batch(
        path,
        byte_tok,
        max_length=16,
        max_prompt_length=8,
        buckets=[16],
        batch_size=4,
        n_user_tokens=3,
        user_vocab_path=vocab_path,
    )
    # Sorted keys "7" < "alice" < "bob" -> 1, 2, 3; no user_id -> generic user 0.
    assert b.user_index_P.tolist() == [3, 1, 2, 0]
    assert row(b, 0) == ([BOS, PAD, PAD, PAD, *b"HiYo", EOS], [0] * 6 + [1, 1, 1])
    assert b.user_slot_mask_BxL[0, :9].tolist() == [0, 1, 1, 1, 0, 0, 0, 0, 0]
    assert b.user_slot_mask_BxL[4, :4].tolist() == [0, 1, 1, 1]  # rejected rows too
    assert Vocab.load(vocab_path).keys == ["7", "alice", "bob"]  # saved with the run


def test_pdpo_saved_vocab_maps_unseen_users_to_zero(tmp_path, byte_tok):
    vocab_path = str(tmp_path / "users.json")
    Vocab(["alice", "bob"], "user_id").save(vocab_path)
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"prompt": "Hi", "chosen": "Yo", "rejected": "No", "user_id": "carol"},
            {"prompt": "Hi", "chosen": "Yo", "rejected": "No", "user_id": "bob"},
        ],
    )
    b = one_batch(
        path,
        byte_tok,
        max_length=16,
        max_prompt_length=8,
        buckets=[16],
        batch_size=2,
        n_user_tokens=1,
        user_vocab_path=vocab_path,
    )
    assert b.user_index_P.tolist() == [0, 2]


def test_condition_id_from_condition_field(tmp_path, byte_tok):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"prompt": "Hi", "chosen": "Yo", "rejected": "No", "system": "b"},
            {"prompt": "Hi", "chosen": "Yo", "rejected": "No", "system": "a"},
            {"prompt": "Hi", "chosen": "Yo", "rejected": "No"},
        ],
    )
    b = one_batch(
        path,
        byte_tok,
        max_length=32,
        max_prompt_length=24,
        buckets=[32],
        batch_size=3,
        condition_field="system",
    )
    assert b.condition_id_P.tolist() == [2, 1, 0]


def test_cut_views_line_up_column_by_column(tmp_path, byte_tok):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"prompt": "Q", "response": "Ab", "judgment": "rude"},
            {"prompt": "Q", "response": "Ok", "judgment": None, "score": 9},
        ],
    )
    b = one_batch(
        path,
        byte_tok,
        record_type="cut",
        batch_size=2,
        max_length=64,
        max_prompt_length=60,
        buckets=[64],
    )
    align_n_prompt = [BOS, *b"Q\n\nThe response should match this judgment: rude"]
    L = 64
    assert b.tokens_BxL.shape == (4, L)
    assert b.tokens_BxL[0, L - len(align_n_prompt) - 3 :].tolist() == align_n_prompt + [*b"Ab", EOS]
    assert b.tokens_BxL[2, L - 5 :].tolist() == [BOS, *b"QAb", EOS]  # Misalign
    assert b.tokens_BxL[1, L - 5 :].tolist() == [BOS, *b"QOk", EOS]  # Align-P
    assert b.segment_ids_BxL[3].sum() == 0  # no Misalign view for a satisfactory one
    # Same response tokens in the same columns in the two views of example 0.
    assert b.loss_mask_BxL[0].tolist() == b.loss_mask_BxL[2].tolist()
    assert b.loss_mask_BxL[0, -3:].tolist() == [1, 1, 1] and b.loss_mask_BxL[0, :-3].sum() == 0
    assert b.is_satisfactory_E.tolist() == [0, 1]
    assert np.isnan(b.score_E[0]) and b.score_E[1] == 9


def test_cut_positive_score_marks_judged_record_satisfactory(tmp_path, byte_tok):
    path = write_jsonl(
        tmp_path / "d.jsonl", [{"prompt": "Q", "response": "A", "judgment": "great", "score": 8}]
    )
    b = one_batch(
        path,
        byte_tok,
        record_type="cut",
        max_length=16,
        max_prompt_length=8,
        buckets=[16],
        cut_positive_score=7.0,
    )
    assert b.is_satisfactory_E.tolist() == [1]
    assert b.tokens_BxL[0, -4:].tolist() == [BOS, *b"QA", EOS]


def test_token_weight_spans_on_plain_text(tmp_path, byte_tok):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {
                "prompt": "Hi",
                "chosen": "abcd",
                "rejected": "xy",
                "chosen_weight_spans": [[1, 3, 0.5]],
                "rejected_token_weights": [0, 2, 0.25],
            }
        ],
    )
    b = one_batch(path, byte_tok, max_length=16, max_prompt_length=8, buckets=[8, 16], token_weights=True)
    np.testing.assert_allclose(b.token_weights_BxL[0], [0, 0, 0, 1, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(b.token_weights_BxL[1], [0, 0, 0, 0, 2, 0.25, 0, 0])


def test_token_weight_spans_through_chat_template_offsets(tmp_path, llama_tok):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {
                "prompt": [{"role": "user", "content": "Hi"}],
                "chosen": [{"role": "assistant", "content": "I am fine ."}],
                "rejected": [{"role": "assistant", "content": "Bye"}],
                "chosen_weight_spans": [{"start": 2, "end": 4, "weight": 3.0}],  # "am"
            }
        ],
    )
    b = one_batch(
        path,
        llama_tok,
        max_length=32,
        max_prompt_length=24,
        buckets=[32],
        token_weights=True,
        default_token_weight=0.5,
    )
    tokens, mask = row(b, 0)
    resp = [t for t, m in zip(tokens, mask, strict=True) if m]
    assert resp == llama_ids("I", "am", "fine", ".", "<|eot_id|>")
    weights = b.token_weights_BxL[0][b.loss_mask_BxL[0] == 1]
    np.testing.assert_allclose(weights, [0.5, 3.0, 0.5, 0.5, 0.5])


@pytest.mark.parametrize(
    "bad",
    [
        {"chosen_token_weights": [1, 1]},  # wrong length: "abcd" + EOS is 5 tokens
        {"chosen_weight_spans": [[3, 9, 1.0]]},  # past the end of "abcd"
        {"chosen_weight_spans": [[0, 1, -1.0]]},  # negative weight
    ],
)
def test_bad_token_weights(tmp_path, byte_tok, bad):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "Hi", "chosen": "abcd", "rejected": "xy", **bad}])
    cfg = DataConfig(
        sources=[{"path": path}],
        max_length=16,
        max_prompt_length=8,
        buckets=[16],
        on_bad_record="skip",
        token_weights=True,
    )
    batches, p = run(cfg, byte_tok)
    assert batches == [] and p.skipped_counts() == {"bad_token_weights": 1}
