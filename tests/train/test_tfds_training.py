"""A TFDS dataset named in data.train trains end to end, exactly as the same records in JSONL.

The dataset is built here (a GeneratorBasedBuilder prepared as ArrayRecord into a temporary
data_dir; nothing is downloaded) and the training process reads it by name, from files, as
it would read any prepared TFDS dataset. Its records are the JSONL file's in the same order,
so both runs see the same record keys and batches: their losses must agree step for step,
and step 1 is ln 2 (the policy is its own reference).
"""

import json
import math

import pytest
import yaml

import train_helpers as th

FIELDS = ("system", "user_info", "prompt", "chosen", "rejected", "condition")
STEPS = 3


def _prepare_tfds(jsonl_path: str, data_dir: str) -> str:
    """The JSONL file's records as the TFDS dataset `style_pairs` under `data_dir`; its name."""
    import tensorflow_datasets as tfds

    with open(jsonl_path) as f:
        records = [json.loads(line) for line in f]

    class StylePairs(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict({k: tfds.features.Text() for k in FIELDS}),
                disable_shuffling=True,  # record i is line i of the file
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i, record in enumerate(records):
                yield i, {k: record[k] for k in FIELDS}

    StylePairs(data_dir=data_dir, file_format="array_record").download_and_prepare()
    return "style_pairs"


def _config(path: str, run_dir: str, train) -> str:
    tree = th.tiny_config(run_dir)
    del tree["stages"]
    tree["data"].update(builtin=None, train=train, eval=None)
    tree["train"].update(steps=STEPS, save_every=STEPS, eval_batches=1)
    with open(path, "w") as f:
        yaml.safe_dump(tree, f)
    return path


@pytest.mark.slow
def test_a_tfds_dataset_name_in_data_train_trains_like_its_jsonl_file(tmp_path, log_path, compile_cache):
    from alignjax.tasks.conditioned_style import write_task

    jsonl = write_task(str(tmp_path / "task"), n_train=48, n_eval=8, seed=4)["train"]
    data_dir = str(tmp_path / "tfds")
    name = _prepare_tfds(jsonl, data_dir)
    tfds_train = {"path": name, "format": "tfds", "split": "train", "data_dir": data_dir}

    losses, logs = {}, {}
    for label, train in (("jsonl", jsonl), ("tfds", tfds_train)):
        run_dir = str(tmp_path / label)
        config = _config(str(tmp_path / f"{label}.yaml"), run_dir, train)
        logs[label] = th.run(config, cache_dir=compile_cache, log_path=log_path(label))
        losses[label] = th.losses(run_dir)

    # It read the TFDS dataset (all 48 records, checked before step 1), not a file.
    assert f"TfdsSource('{name}', 'train', 48 rows)" in logs["tfds"], logs["tfds"][-3000:]
    assert f"finished at step {STEPS}" in logs["tfds"]
    assert sorted(losses["tfds"]) == list(range(1, STEPS + 1))
    assert abs(losses["tfds"][1] - math.log(2)) < 1e-6
    th.assert_losses_match(losses["tfds"], losses["jsonl"], range(1, STEPS + 1), 1e-6, "TFDS vs JSONL")
