"""Same-length M-RoPE batches (VERL_NOTES "Pitfall 1"): the plugin's fix in ``verl_difficulty/cpu/compat.py`` item 2.

How the failing input is built: per-sample ``position_ids`` of shape ``(4, L)`` (and ``input_ids`` of shape ``(L,)``)
are packed by TransferQueue's OWN get-side packing function, ``AsyncSimpleStorageManager._pack_field_values``
(``transfer_queue/storage/managers/simple_storage_manager.py:542-588``, what the SimpleStorage backend returns to a
worker), put in a ``TensorDict`` as TransferQueue does, and passed through verl's own ``maybe_fix_3d_position_ids``
as ``verl/workers/engine_workers.py:252`` does before the mini-batch iterator. (verl's ``list_of_dict_to_tensordict``
is not the culprit: it ``torch.stack``s equal shapes into a dense tensor.) The original verl functions are reached
through ``__wrapped__`` of the plugin's wrappers.

The e2e test runs the stock CPU smoke training for one step on a dataset where every prompt has the same image size
and text, with ``data.max_response_length=1`` so that every response has exactly one token (verl 0.9.1's agent loop
does not forward ``rollout.ignore_eos`` to the server, ``verl/experimental/agent_loop/agent_loop.py:590``, so an EOS
can end a longer response early): all 16 sequences have the same length, which crashed ``update_actor`` before.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time

import pytest
import torch
from tensordict import TensorDict

import verl  # noqa: F401  (loads the plugin entry point, which installs the fix)
from verl.utils import tensordict_utils as tu
from verl_difficulty.cpu.compat import patch_mrope_same_length

C = 4  # M-RoPE position-id channels as verl stores them (text position + 3 rope sections)


def _pack(values: list[torch.Tensor]) -> torch.Tensor:
    from transfer_queue.storage.managers.simple_storage_manager import AsyncSimpleStorageManager

    return AsyncSimpleStorageManager._pack_field_values(values)


def _samples(lengths: list[int]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Distinct per-sample position ids ``(4, L_i)`` (channel c of sample i holds ``10000*i + 1000*c + t``) and ids."""
    pos = [
        torch.stack([10000 * i + 1000 * c + torch.arange(n) for c in range(C)]) for i, n in enumerate(lengths)
    ]
    ids = [100 * i + torch.arange(n) for i, n in enumerate(lengths)]
    return pos, ids


def _tq_batch(lengths: list[int], with_input_ids: bool = True) -> tuple[TensorDict, list[torch.Tensor]]:
    """The batch a training worker holds after a TransferQueue get and ``maybe_fix_3d_position_ids``."""
    pos, ids = _samples(lengths)
    fields = {"position_ids": _pack(pos), "row": torch.arange(len(lengths))}
    if with_input_ids:
        fields["input_ids"] = _pack(ids)
    td = TensorDict(fields, batch_size=[len(lengths)])
    tu.maybe_fix_3d_position_ids(td)  # verl/workers/engine_workers.py:252
    return td, pos


def _original(name: str):
    fn = getattr(tu, name)
    assert getattr(fn, "_verl_difficulty_mrope", False), f"{name} is not patched: the plugin hook did not fire"
    return fn.__wrapped__


def _rows(nt: torch.Tensor) -> list[torch.Tensor]:
    return list(nt.unbind(0))


def _assert_rows(nt: torch.Tensor, expected: list[torch.Tensor]) -> None:
    got = _rows(nt)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape and torch.equal(g, e), (g.shape, e.shape)


# ------------------------------------------------------------------------------------------------------ root cause
def test_transferqueue_packs_same_length_position_ids_along_the_channel_dim():
    pos, _ = _samples([7, 7, 7])
    nt = _pack(pos)
    assert nt._ragged_idx == 1 and nt.values().shape == (3 * C, 7) and nt.offsets().tolist() == [0, 4, 8, 12]
    # varying lengths: ragged along the sequence, the layout verl expects
    varying = _pack(_samples([5, 7, 3])[0])
    assert varying._ragged_idx == 2 and varying.values().shape == (C, 15)
    # verl relabels without re-laying out: values stay (B*4, L) but are now read along L
    td, _ = _tq_batch([7, 7, 7])
    assert td["position_ids"]._ragged_idx == 2 and td["position_ids"].values().shape == (3 * C, 7)


# -------------------------------------------------------------------------------------------- index_select (crash)
def test_index_select_original_fails_and_fixed_returns_the_right_rows():
    lengths = [160] * 16
    td, pos = _tq_batch(lengths)
    indices = torch.tensor([5, 0, 15, 3])

    with pytest.raises(RuntimeError, match="split_with_sizes"):
        _original("index_select_tensor_dict")(td, indices)

    out = tu.index_select_tensor_dict(td, indices)
    _assert_rows(out["position_ids"], [pos[i] for i in indices.tolist()])
    assert out["position_ids"]._ragged_idx == 2 and out["position_ids"].values().shape == (C, 4 * 160)
    _assert_rows(out["input_ids"], [td["input_ids"].unbind(0)[i] for i in indices.tolist()])
    assert out["row"].tolist() == indices.tolist()
    # downstream verl code still works on the result (it calls maybe_fix again, then chunks it)
    tu.maybe_fix_3d_position_ids(out)
    _assert_rows(tu.concat_nested_tensors([c["position_ids"] for c in tu.chunk_tensordict(out, 2)]),
                 [pos[i] for i in indices.tolist()])
    # the caller's batch is not modified
    assert td["position_ids"].values().shape == (16 * C, 160)


def test_make_iterator_the_failing_call_site_uses_the_fix():
    """``update_actor`` -> ``train_mini_batch`` -> ``make_iterator`` (module-global lookup, tensordict_utils.py:610)."""
    td, pos = _tq_batch([12] * 8)
    seen = []
    for mini in tu.make_iterator(td, mini_batch_size=4, epochs=1, seed=0):
        tu.maybe_fix_3d_position_ids(mini)
        for r, p in zip(mini["row"].tolist(), _rows(mini["position_ids"])):
            assert torch.equal(p, pos[r])
            seen.append(r)
    assert sorted(seen) == list(range(8))


def test_ambiguous_length_b_times_4_original_silently_wrong_fixed_right():
    """``L == B*4``: ``unbind`` does not raise but returns ``(B*4, 4)`` slices; ``input_ids`` lengths decide."""
    td, pos = _tq_batch([64] * 16)
    wrong = _original("index_select_tensor_dict")(td, torch.tensor([1, 2]))
    assert _rows(wrong["position_ids"])[0].shape == (64, 4)  # silently wrong in verl
    _assert_rows(tu.index_select_tensor_dict(td, torch.tensor([1, 2]))["position_ids"], [pos[1], pos[2]])


# ----------------------------------------------------------------------------------------- chunk (silently wrong)
def test_chunk_original_is_silently_wrong_and_fixed_returns_the_right_rows():
    td, pos = _tq_batch([160] * 16)
    wrong = _original("chunk_tensordict")(td, 2)  # its unbind fallback does not raise ...
    assert _rows(wrong[0]["position_ids"])[0].shape == (C, 4)  # ... but truncates/mixes rows
    chunks = tu.chunk_tensordict(td, 2)
    assert [c["row"].tolist() for c in chunks] == [list(range(8)), list(range(8, 16))]
    for k, c in enumerate(chunks):
        _assert_rows(c["position_ids"], pos[8 * k : 8 * (k + 1)])


# -------------------------------------------------------------------------------------------- everything else as-is
@pytest.mark.parametrize("name", ["index_select_tensor_dict", "chunk_tensordict"])
def test_other_inputs_go_to_the_original_unchanged(name, monkeypatch):
    from verl_difficulty.cpu import compat

    cases = {
        "varying lengths (TQ)": _tq_batch([5, 9, 3, 7])[0],
        "verl builder, same lengths": tu.get_tensordict(
            {"position_ids": tu.nested_tensor_from_tensor_list(_samples([6] * 4)[0]), "row": torch.arange(4)}
        ),
        "ambiguous without input_ids": _tq_batch([16] * 4, with_input_ids=False)[0],
        "no position_ids": tu.get_tensordict({"input_ids": _pack(_samples([3, 4, 5, 6])[1]), "row": torch.arange(4)}),
    }
    seen = []
    real = compat._repair_mrope_position_ids
    monkeypatch.setattr(compat, "_repair_mrope_position_ids", lambda b: seen.append(real(b) is b) or real(b))
    arg = torch.tensor([3, 1]) if name == "index_select_tensor_dict" else 2
    for label, td in cases.items():
        got, want = getattr(tu, name)(td, arg), _original(name)(td, arg)
        got, want = (list(got), list(want)) if isinstance(got, (list, tuple)) else ([got], [want])
        assert len(got) == len(want), label
        for g, w in zip(got, want):
            assert sorted(g.keys()) == sorted(w.keys()), label
            for key in g.keys():
                gv, wv = g[key], w[key]
                if gv.is_nested:
                    assert all(torch.equal(a, b) for a, b in zip(gv.unbind(0), wv.unbind(0))), (label, key)
                else:
                    assert torch.equal(gv, wv), (label, key)
    assert seen == [True] * len(cases)


def test_patch_is_idempotent_and_installed_by_import_verl_in_a_fresh_process():
    select, chunk = tu.index_select_tensor_dict, tu.chunk_tensordict
    patch_mrope_same_length()
    assert tu.index_select_tensor_dict is select and tu.chunk_tensordict is chunk
    assert not hasattr(select.__wrapped__, "__wrapped__") and not hasattr(chunk.__wrapped__, "__wrapped__")
    code = (
        "import verl\n"
        "from verl.utils import tensordict_utils as tu\n"
        "import verl_difficulty.plugin as p\n"
        "assert 'mrope_same_length' in p.DONE and not p.ERRORS, (p.DONE, p.ERRORS)\n"
        "assert tu.index_select_tensor_dict._verl_difficulty_mrope and tu.chunk_tensordict._verl_difficulty_mrope\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "VERL_PLATFORM"}  # not CPU specific
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]


# ------------------------------------------------------------------------------------------------------------ e2e
REWARD_FN = '''
def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kw):
    return {"score": float(str(ground_truth) in solution_str), "acc": float(str(ground_truth) in solution_str)}
'''


def _same_length_rows(n: int, start: int, split: str) -> list[dict]:
    """Synthetic rows with one 56x56 image and the same question text each: every prompt has the same length."""
    from PIL import Image

    from verl_difficulty.data import synthetic

    buf = io.BytesIO()
    Image.new("RGB", (56, 56), synthetic.BACKGROUND).save(buf, format="PNG")
    question = "How many red shapes are in the image? Answer with a single number."
    rows = synthetic.generate_rows(n, seed=0, start_index=start, split=split)
    for row in rows:
        row["images"] = [{"bytes": buf.getvalue(), "path": None}]
        row["prompt"] = [
            m if m["role"] != "user" else {"role": "user", "content": synthetic.IMAGE_PLACEHOLDER + question}
            for m in row["prompt"]
        ]
        row["extra_info"]["question"] = question
        assert synthetic.validate_row(row) is None
    return rows


@pytest.mark.e2e
def test_e2e_one_step_on_a_same_length_batch(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from verl_difficulty.cli import smoke_recipe_dir
    from verl_difficulty.data.synthetic import parquet_schema
    from verl_difficulty.models.tiny import build_tiny_model_dir

    model = build_tiny_model_dir(str(tmp_path / "tiny"))
    for split, start in (("train", 0), ("val", 8)):
        table = pa.Table.from_pylist(_same_length_rows(8, start, split), schema=parquet_schema())
        pq.write_table(table, tmp_path / f"{split}.parquet")
    (tmp_path / "rf.py").write_text(REWARD_FN)
    metrics = tmp_path / "m.jsonl"
    cmd = [
        sys.executable, "-m", "verl.trainer.main_ppo",
        "--config-path", str(smoke_recipe_dir()), "--config-name", "grpo_tiny_vl",
        f"actor_rollout_ref.model.path={model}",
        f"data.train_files={tmp_path / 'train.parquet'}",
        f"data.val_files={tmp_path / 'val.parquet'}",
        f"trainer.default_local_dir={tmp_path / 'ckpt'}",
        "trainer.total_training_steps=1", "trainer.save_freq=-1", "trainer.resume_mode=disable",
        "algorithm.adv_estimator=grpo",
        "reward.reward_manager.source=register", "reward.reward_manager.name=naive",
        f"reward.custom_reward_function.path={tmp_path / 'rf.py'}",
        "reward.custom_reward_function.name=compute_score",
        "data.max_response_length=1",
        "trainer.logger=[console,file]",
    ]
    env = dict(os.environ, VERL_PLATFORM="cpu", VERL_FILE_LOGGER_PATH=str(metrics), RAY_DEDUP_LOGS="0")
    start = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    wall = time.time() - start
    out = proc.stdout + proc.stderr
    (tmp_path / "run.log").write_text(out)
    print(f"[e2e] same-length M-RoPE run: wall {wall:.1f}s, log {tmp_path / 'run.log'}")
    assert proc.returncode == 0, f"rc={proc.returncode}:\n{out[-6000:]}"

    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    steps = [r for r in records if "actor/grad_norm" in r["data"]]
    assert [r["step"] for r in steps] == [1]
    d = steps[0]["data"]
    # the batch really was the failing one: every sequence of the same length
    assert d["prompt_length/min"] == d["prompt_length/max"]
    assert d["response_length/min"] == d["response_length/max"] == 1
    assert d["global_seqlen/min"] == d["global_seqlen/max"] == 16 * (d["prompt_length/max"] + 1)
    # old log-probs were computed with the right position ids (verl's chunk fallback gave ~1.7e-6 here, 1e-9 fixed)
    assert d["training/rollout_probs_diff_max"] < 1e-7, d["training/rollout_probs_diff_max"]
