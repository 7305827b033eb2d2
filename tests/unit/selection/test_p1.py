"""P1 selection: buckets (lambda* = 0.7 boundary, bucket source), train/baselines/SFT/GRPO sets, verl loading."""

from __future__ import annotations

import os
import random

import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from verl_difficulty import schema
from verl_difficulty.config import ConfigError
from verl_difficulty.selection import run_selection
from verl_difficulty.selection.p1 import bucket_of

# ids 0..7: unsolved, hard, hard (0.4 edge), medium, 0.7 (text: easy / appendix: medium), never fails, easy, medium
LAMBDAS = [0.0, 0.2, 0.4, 0.5, 0.7, None, 0.8, 0.6]


def _ids(path):
    t = pq.read_table(path)
    return [e[schema.PROMPT_ID] for e in t.column(schema.EXTRA_INFO).to_pylist()]


def test_bucket_of_boundary():
    assert [bucket_of(x) for x in LAMBDAS] == ["unsolved", "hard", "hard", "medium", "easy", "easy", "easy",
                                               "medium"]
    assert bucket_of(0.7, "appendix") == "medium" and bucket_of(0.7000001, "appendix") == "easy"
    assert bucket_of(float("nan")) == "easy"


@pytest.mark.parametrize("boundary,train", [("text", [1, 2, 3, 7]), ("appendix", [1, 2, 3, 4, 7])])
def test_p1_lambda_boundary_and_subsets(scored, tmp_path, read_json, boundary, train):
    path = scored({schema.PISM_LAMBDA: LAMBDAS})
    out = tmp_path / "out"
    rec = run_selection("p1", [path], str(out), {"lambda_boundary": boundary, "seed": 3})
    assert _ids(out / "train.parquet") == train
    n = len(train)
    assert _ids(out / "subsets" / "random.parquet") == sorted(random.Random(3).sample(range(8), n))
    assert _ids(out / "subsets" / "fullset.parquet") == list(range(8))
    assert _ids(out / "subsets" / "unsolved.parquet") == [0]
    assert _ids(out / "grpo.parquet") == train
    easy = [4, 5, 6] if boundary == "text" else [5, 6]
    assert _ids(out / "sft.parquet") == easy
    t = pq.read_table(out / "train.parquet")
    buckets = t.column(schema.DIFFICULTY_BUCKET).to_pylist()
    assert buckets == [e[schema.DIFFICULTY_BUCKET] for e in t.column(schema.EXTRA_INFO).to_pylist()]
    assert set(buckets) == {"hard", "medium"}
    assert schema.PISM_LAMBDA in t.column_names and "reward_model" in t.column_names
    d = pq.read_table(out / "decisions.parquet").to_pylist()
    assert [r["index"] for r in d] == list(range(8)) and [r["kept"] for r in d] == [i in train for i in range(8)]
    rnd = random.Random(3).sample(range(8), n)
    assert d[0]["reason"] == "unsolved"
    assert d[0]["subset"] == ",".join((["random"] if 0 in rnd else []) + ["fullset", "unsolved"])
    assert d[1]["subset"].startswith("train,") and d[1]["subset"].endswith(",fullset,grpo")
    assert d[4]["bucket"] == ("easy" if boundary == "text" else "medium")
    assert rec["counts"]["kept"] == n and rec["counts"]["by_bucket"]["unsolved"] == 1
    assert rec["outputs"]["random"] == "subsets/random.parquet" and rec["params"]["lambda_boundary"] == boundary
    assert read_json(out / "selection.json")["counts"] == rec["counts"]


def test_p1_random_baseline_is_seeded(scored, tmp_path):
    path = scored({schema.PISM_LAMBDA: LAMBDAS * 4})
    picks = {}
    for run, seed in (("a", 1), ("b", 1), ("c", 2)):
        run_selection("p1", [path], str(tmp_path / run), {"seed": seed})
        picks[run] = _ids(tmp_path / run / "subsets" / "random.parquet")
    assert picks["a"] == picks["b"] and picks["a"] != picks["c"] and len(picks["a"]) == 16
    assert (tmp_path / "a" / "train.parquet").read_bytes() == (tmp_path / "b" / "train.parquet").read_bytes()


def test_p1_cmab_bucket_source(scored, tmp_path):
    path = scored({schema.PISM_LAMBDA: [0.2, 0.5, 0.9, 0.0], schema.CMAB_BUCKET: ["easy", "hard", "medium", "hard"]})
    run_selection("p1", [path], str(tmp_path / "c"), {"bucket_source": "cmab"})
    assert _ids(tmp_path / "c" / "train.parquet") == [1, 2, 3]
    run_selection("p1", [path], str(tmp_path / "p"), {"bucket_source": "pism"})
    assert _ids(tmp_path / "p" / "train.parquet") == [0, 1]


def test_p1_reads_thresholds_from_pism_provenance(scored, tmp_path):
    prov = {"pism": {"params": {"hard_max": 0.3, "medium_max": 0.6}}}
    path = scored({schema.PISM_LAMBDA: [0.3, 0.4, 0.6, 0.65]}, provenance=prov)
    run_selection("p1", [path], str(tmp_path / "o"), {"train_buckets": ["hard"], "lambda_boundary": "appendix"})
    assert _ids(tmp_path / "o" / "train.parquet") == [0]
    d = pq.read_table(tmp_path / "o" / "decisions.parquet").column("bucket").to_pylist()
    assert d == ["hard", "medium", "medium", "easy"]


def test_p1_sft_target_and_column(scored, tmp_path):
    path = scored({schema.PISM_LAMBDA: [None, 0.5], "rationale": ["<think>r</think><answer>0</answer>", "x"]})
    run_selection("p1", [path], str(tmp_path / "o"))
    msgs = pq.read_table(tmp_path / "o" / "sft.parquet").column(schema.SFT_MESSAGES).to_pylist()
    assert msgs == [[{"role": "user", "content": "question 0?"},
                     {"role": "assistant", "content": "<think>...</think><answer>0</answer>"}]]
    run_selection("p1", [path], str(tmp_path / "c"), {"sft_response_column": "rationale"})
    msgs = pq.read_table(tmp_path / "c" / "sft.parquet").column(schema.SFT_MESSAGES).to_pylist()
    assert msgs[0][-1]["content"] == "<think>r</think><answer>0</answer>"


def test_p1_errors(scored, tmp_path):
    path = scored({schema.PASS_RATE: [0.5]})
    with pytest.raises(ConfigError, match=r"p1 --bucket-source pism needs pism_lambda_star.*--scorers pism"):
        run_selection("p1", [path], str(tmp_path / "o"))
    with pytest.raises(ConfigError, match=r"needs cmab_bucket.*--scorers cmab"):
        run_selection("p1", [path], str(tmp_path / "o"), {"bucket_source": "cmab"})
    with pytest.raises(ConfigError, match=r"select.p1.lambda_boundary: 'middle' is not one of"):
        run_selection("p1", [path], str(tmp_path / "o"), {"lambda_boundary": "middle"})
    with pytest.raises(ConfigError, match=r"select.p1.mode: p1 implements \['paper'\]"):
        run_selection("p1", [path], str(tmp_path / "o"), {"mode": "reference_code"})
    assert not os.path.exists(tmp_path / "o" / "selection.json")


# --------------------------------------------------------------------------------------------------------------------
# verl loads the outputs: train.parquet through RLHFDataset, sft.parquet through MultiTurnSFTDataset
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic_selection(tmp_path_factory):
    import pyarrow as pa
    from verl.utils import hf_processor, hf_tokenizer

    from verl_difficulty.data.io import add_score_columns, write_parquet
    from verl_difficulty.data.synthetic import write_dataset
    from verl_difficulty.models.tiny import build_tiny_model_dir

    work = tmp_path_factory.mktemp("p1verl")
    model = build_tiny_model_dir(str(work / "tiny"), seed=0)
    write_dataset(str(work / "data"), n_train=8, n_val=2, seed=0)
    t = pq.read_table(work / "data" / "train.parquet")
    lam = pa.array([0.0, 0.2, 0.5, 0.7, None, 0.3, 0.9, 0.6], type=pa.float64())
    write_parquet(str(work / "scored.parquet"), add_score_columns(t, {schema.PISM_LAMBDA: lam}, {"t": {}}))
    run_selection("p1", [str(work / "scored.parquet")], str(work / "sel"))
    return work, hf_tokenizer(model), hf_processor(model)


def test_p1_train_loads_in_rlhf_dataset(synthetic_selection):
    from verl.trainer.ppo.utils import create_rl_dataset

    work, tok, proc = synthetic_selection
    data = OmegaConf.create({
        "prompt_key": "prompt", "image_key": "images", "max_prompt_length": 512, "filter_overlong_prompts": False,
        "return_raw_chat": True, "cache_dir": str(work / "cache"), "custom_cls": {"path": None, "name": None},
    })
    ds = create_rl_dataset(str(work / "sel" / "train.parquet"), data, tok, proc, is_train=True)
    assert len(ds) == 4  # hard 0.2, 0.3; medium 0.5, 0.6
    rows = [ds[i] for i in range(len(ds))]
    assert [r[schema.EXTRA_INFO][schema.PROMPT_ID] for r in rows] == [1, 2, 5, 7]
    assert [r[schema.EXTRA_INFO][schema.DIFFICULTY_BUCKET] for r in rows] == ["hard", "medium", "hard", "medium"]
    assert all("multi_modal_data" in r or "raw_prompt" in r for r in rows)


def test_p1_sft_loads_in_verl_sft_dataset(synthetic_selection):
    from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset

    work, tok, proc = synthetic_selection
    ds = MultiTurnSFTDataset(str(work / "sel" / "sft.parquet"), tok, OmegaConf.create({"max_length": 2048,
                                                                                      "truncation": "right"}),
                             processor=proc)
    assert len(ds) == 3  # easy: 0.7 (text boundary), never fails, 0.9
    item = ds[0]
    ids, mask = item["input_ids"], item["loss_mask"]
    target = tok.decode(ids[mask.bool()])
    truth = pq.read_table(work / "sel" / "sft.parquet").column("reward_model").to_pylist()[0]["ground_truth"]
    assert f"<answer>{truth}</answer>" in target
