"""P2 difficulty hints: message edits, row selection, and verl's real RLHFDataset through its custom_cls hook."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from verl_difficulty import schema
from verl_difficulty.sampling.config import SamplerConfig
from verl_difficulty.sampling.hints import DEFAULT_HINT, HintConfig, add_hint
from verl_difficulty.sampling.sampler import DifficultySampler
from verl_difficulty.seam.hint_dataset import configure_dataset_hints, install_hint_dataset

SYSTEM = {"role": "system", "content": "You are careful."}
USER = {"role": "user", "content": "<image>How many red shapes?"}


def _cfg(**kw):
    return HintConfig.from_dict({"enable": True, **kw})


def test_add_hint_positions_and_roles():
    msgs = [SYSTEM, USER]
    out = add_hint(msgs, _cfg(template="HARD."))
    assert out[1]["content"] == "<image>How many red shapes?\nHARD."
    assert msgs[1]["content"] == USER["content"]  # the input is not mutated
    prefixed = add_hint(msgs, _cfg(template="HARD.", position="prefix"))
    assert prefixed[1]["content"] == "HARD.\n<image>How many red shapes?"
    assert add_hint(msgs, _cfg(template="HARD.", role="system"))[0]["content"] == "You are careful.\nHARD."
    no_system = add_hint([USER], _cfg(template="HARD.", role="system"))
    assert no_system[0] == {"role": "system", "content": "HARD."} and no_system[1] == USER
    parts = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]}]
    assert add_hint(parts, _cfg(template="H"))[0]["content"][-1] == {"type": "text", "text": "H"}
    multi = [USER, {"role": "assistant", "content": "3"}, {"role": "user", "content": "And blue?"}]
    assert add_hint(multi, _cfg(template="H"))[2]["content"] == "And blue?\nH"  # the last user message
    with pytest.raises(ValueError, match="no user message"):
        add_hint([SYSTEM], _cfg())


def test_hint_config_errors():
    for bad, msg in [
        ({"template": "Look at <image> again"}, r"difficulty\.hints\.template: may not contain"),
        ({"position": "middle"}, r"difficulty\.hints\.position: 'middle' is not one of"),
        ({"role": "assistant"}, r"difficulty\.hints\.role: 'assistant' is not one of"),
        ({"select": ["always"]}, r"difficulty\.hints\.select\[0\]: 'always' is not one of"),
        ({"colour": 1}, r"unknown setting difficulty\.hints\.colour; valid keys under difficulty\.hints"),
        ({"max_pass_rate": 2}, r"difficulty\.hints\.max_pass_rate: must be <= 1\.0, got 2\.0"),
    ]:
        with pytest.raises(ValueError, match=msg):
            HintConfig.from_dict(bad)
    assert "difficult" in DEFAULT_HINT


# --------------------------------------------------------------------------------------------------------------------
# verl's RLHFDataset through data.custom_cls, on the synthetic image data
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from verl.utils import hf_processor, hf_tokenizer

    from verl_difficulty.data.synthetic import write_dataset
    from verl_difficulty.data.true_buckets import add_true_buckets
    from verl_difficulty.models.tiny import build_tiny_model_dir

    work = tmp_path_factory.mktemp("hints")
    model = build_tiny_model_dir(str(work / "tiny"), seed=0)
    write_dataset(str(work / "data"), n_train=16, n_val=8, seed=0)
    for split in ("train", "val"):
        add_true_buckets(str(work / "data" / f"{split}.parquet"))
    return work, hf_tokenizer(model), hf_processor(model)


def _dataset(assets, split="train"):
    from verl.trainer.ppo.utils import create_rl_dataset

    work, tok, proc = assets
    data = OmegaConf.create({
        "prompt_key": "prompt", "image_key": "images", "max_prompt_length": 512, "filter_overlong_prompts": False,
        "return_raw_chat": True, "cache_dir": str(work / "cache"), "custom_cls": {"path": None, "name": None},
    })
    install_hint_dataset(data)
    assert data.custom_cls.path == "pkg://verl_difficulty.seam.hint_dataset"
    return create_rl_dataset(str(work / "data" / f"{split}.parquet"), data, tok, proc, is_train=split == "train")


def _user_text(row) -> str:
    msg = [m for m in row["raw_prompt"] if m["role"] == "user"][-1]
    return "".join(p.get("text", "") for p in msg["content"] if p.get("type") == "text")


def test_hint_dataset_hints_hard_rows_and_keeps_the_image(assets):
    ds = _dataset(assets)
    configure_dataset_hints(ds, _cfg(select=["bucket"], buckets=["hard"]), "train")
    hinted = 0
    for i in range(len(ds)):
        row = ds[i]
        bucket = row[schema.EXTRA_INFO][schema.DIFFICULTY_BUCKET]
        assert bucket == schema.BUCKETS[row[schema.EXTRA_INFO][schema.TRUE_LEVEL]]  # add_true_buckets' mapping
        text = _user_text(row)
        assert text.endswith(DEFAULT_HINT) == (bucket == "hard")
        assert row[schema.EXTRA_INFO][schema.HINT_APPLIED] == (bucket == "hard")
        user = [m for m in row["raw_prompt"] if m["role"] == "user"][-1]
        assert [p["type"] for p in user["content"]][0] == "image"  # the placeholder became the image part, first
        hinted += bucket == "hard"
        if bucket == "hard":
            rendered = assets[2].apply_chat_template(row["raw_prompt"], tokenize=False, add_generation_prompt=True)
            assert rendered.count("<|image_pad|>") == 1 and DEFAULT_HINT in rendered
    assert hinted == 4  # 16 rows, balanced over 4 levels


def test_hint_metrics_come_from_the_batch_rows_also_with_dataloader_workers(assets):
    """verl's default of 8 dataloader workers builds the rows in other processes: the metrics are counted from the
    rows' marks in the batch, so they are right there too; a prompt's rollouts count once."""
    from torch.utils.data import DataLoader
    from verl.utils.dataset.rl_dataset import collate_fn

    from verl_difficulty.sampling.hints import batch_hint_metrics

    ds = _dataset(assets)
    configure_dataset_hints(ds, _cfg(select=["bucket"], buckets=["hard"]), "train")
    extra = []
    for batch in DataLoader(ds, batch_size=8, num_workers=2, collate_fn=collate_fn):
        extra.extend(batch[schema.EXTRA_INFO])
    ids = [e[schema.PROMPT_ID] for e in extra]
    assert len(set(ids)) == 16
    m = batch_hint_metrics(extra, ids)
    assert m == {"difficulty/hints/applied": 4.0, "difficulty/hints/applied_frac": 0.25}
    # four rollouts per prompt (verl repeats the rows under one uid): the same counts
    assert batch_hint_metrics([e for e in extra for _ in range(4)], [i for i in ids for _ in range(4)]) == m
    # a row without the mark (no hint dataset) is not hinted; an empty batch gives zeros
    assert batch_hint_metrics([{}, None], ["a", "b"]) == {"difficulty/hints/applied": 0.0,
                                                          "difficulty/hints/applied_frac": 0.0}
    assert batch_hint_metrics([], [])["difficulty/hints/applied_frac"] == 0.0


def test_validation_gets_no_hints_unless_asked(assets):
    val = _dataset(assets, "val")
    configure_dataset_hints(val, _cfg(select=["bucket"]), "val")
    assert not any(DEFAULT_HINT in _user_text(val[i]) for i in range(len(val)))
    configure_dataset_hints(val, _cfg(select=["bucket"], validation=True), "val")
    assert any(DEFAULT_HINT in _user_text(val[i]) for i in range(len(val)))


def test_online_and_stage_selection_ask_the_sampler(assets):
    ds = _dataset(assets)
    cfg = SamplerConfig.from_dict({
        "enable": True, "mode": "stratified", "mix": {"medium": 1.0},
        "schedule": {"type": "two_stage", "switch_step": 2, "stage1": {"mix": {"medium": 1.0}},
                     "stage2": {"mix": {"hard": 1.0}}},
    })
    sampler = DifficultySampler.from_dataset(ds, cfg, batch_size=4)
    with pytest.raises(ValueError, match="needs the difficulty sampler"):
        configure_dataset_hints(ds, _cfg(select=["stage"]), "train")
    configure_dataset_hints(ds, _cfg(select=["stage"], stages=[2]), "train", sampler=sampler)
    it = iter(sampler)
    stage1 = [next(it) for _ in range(4)]
    assert not any(DEFAULT_HINT in _user_text(ds[i]) for i in stage1)
    sampler.update(sampler.prompt_ids[stage1], np.zeros(4), step=1)
    stage2 = [next(it) for _ in range(4)]
    assert all(DEFAULT_HINT in _user_text(ds[i]) for i in stage2)

    configure_dataset_hints(ds, _cfg(select=["online"], max_pass_rate=0.3), "train", sampler=sampler)
    low = int(stage1[0])
    sampler.update(np.full(8, sampler.prompt_ids[low]), np.zeros(8), step=2)  # Beta(1,1)+8 failures: 0.1 <= 0.3
    flags = [DEFAULT_HINT in _user_text(ds[i]) for i in range(len(ds))]
    assert flags[low] and sum(flags) == 1


def test_a_foreign_dataset_class_is_a_clear_error():
    with pytest.raises(TypeError, match=r"subclass verl_difficulty\.seam\.hint_dataset\.DifficultyHintDataset"):
        configure_dataset_hints(object(), _cfg(), "train")
    data = OmegaConf.create({"custom_cls": {"path": "pkg://my.data", "name": "Mine"}})
    install_hint_dataset(data)
    assert data.custom_cls.name == "Mine"  # a user class is kept (and checked after construction)
