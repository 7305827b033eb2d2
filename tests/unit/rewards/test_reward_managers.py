"""The plugin's reward managers through verl's real reward loop (RewardLoopWorker, load_reward_manager, DataProto).

The tokenizer is a tiny byte-level BPE built in code with ``tokenizers`` (no model hub), saved to disk and loaded back
by verl's own ``hf_tokenizer`` inside ``RewardLoopWorker``.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from verl import DataProto
from verl.experimental.reward_loop import RewardLoopWorker
from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls
from verl.trainer.ppo.reward import load_reward_manager
from verl_difficulty.config import ConfigError
from verl_difficulty.rewards import functions
from verl_difficulty.rewards.config import RewardSettings, resolve_settings, settings_from_config
from verl_difficulty.rewards.managers import (  # importing it registers the managers
    MathAccFormatRewardManager,
    PerceptionRewardManager,
    R1VAccRewardManager,
)
from verl_difficulty.schema import ACC, EXTRA_INFO, FORMAT, PROMPT_ID, TASK_TYPE

EOS = "<|im_end|>"
PAD = "<|endoftext|>"


# ====================================================================================================================
# Fixtures: tokenizer, config, DataProto
# ====================================================================================================================
@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=[PAD, "<|im_start|>", EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = [
        "<think>Let me think step by step.</think> The answer is \\boxed{\\frac{1}{2}}.",
        "<think>I count the objects.</think> <answer>three</answer>",
        "<answer>[0, 0, 10, 10]</answer> <answer>HELLO WORLD</answer>",
        "What is one half? Answer with a boxed number.",
    ]
    tok.train_from_iterator(corpus, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD)
    d = tmp_path_factory.mktemp("tiny_tokenizer")
    hf.save_pretrained(str(d))
    return str(d)


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from verl.utils import hf_tokenizer

    return hf_tokenizer(tokenizer_dir)


def make_config(tokenizer_dir, name="math_acc_format", source="register", module_path=None, reward_kwargs=None,
                difficulty_reward=None, custom_fn=None, custom_kwargs=None):
    """The parts of verl's trainer config that RewardLoopWorker and load_reward_manager read."""
    cfg = {
        "actor_rollout_ref": {"model": {"path": tokenizer_dir, "tokenizer_path": None}},
        "reward": {
            "num_workers": 1,
            "custom_reward_function": {"path": custom_fn[0] if custom_fn else None,
                                       "name": custom_fn[1] if custom_fn else "compute_score",
                                       "reward_kwargs": custom_kwargs or {}},
            "reward_manager": {"source": source, "name": name,
                               "module": {"path": module_path, "name": "custom_reward_manager"}},
            "reward_model": {"enable": False, "enable_resource_pool": False, "model_path": None},
            "sandbox_fusion": {"url": None, "max_concurrent": 64, "memory_limit_mb": 1024},
        },
    }
    if reward_kwargs is not None:
        cfg["reward"]["reward_kwargs"] = reward_kwargs
    if difficulty_reward is not None:
        cfg["difficulty"] = {"reward": difficulty_reward}
    return OmegaConf.create(cfg)


def make_batch(tokenizer, rows: list[dict], prompt_len: int = 16, response_len: int | None = None,
               raw_response_ids: list[list[int]] | None = None) -> DataProto:
    """A padded batch as verl's trainer holds it: left-padded prompts, right-padded responses (+ EOS)."""
    pad = tokenizer.pad_token_id
    prompts, responses = [], []
    for i, row in enumerate(rows):
        p = tokenizer.encode(row.get("prompt", "What is it?"), add_special_tokens=False)[-prompt_len:]
        if raw_response_ids is not None and raw_response_ids[i] is not None:
            r = list(raw_response_ids[i])
        else:
            r = tokenizer.encode(row["response"], add_special_tokens=False) + [tokenizer.eos_token_id]
        prompts.append(p)
        responses.append(r)
    rl = response_len or max(len(r) for r in responses)
    P = torch.full((len(rows), prompt_len), pad, dtype=torch.long)
    R = torch.full((len(rows), rl), pad, dtype=torch.long)
    M = torch.zeros((len(rows), prompt_len + rl), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        r = r[:rl]
        P[i, prompt_len - len(p):] = torch.tensor(p)
        R[i, : len(r)] = torch.tensor(r)
        M[i, prompt_len - len(p): prompt_len + len(r)] = 1
    input_ids = torch.cat([P, R], dim=1)
    position_ids = torch.clamp(torch.cumsum(M, dim=1) - 1, min=0)
    non_tensors = {
        "data_source": np.array([row.get("data_source", "synthetic") for row in rows], dtype=object),
        "reward_model": np.array([{"style": "rule", "ground_truth": row["gt"], **row.get("rm", {})} for row in rows],
                                 dtype=object),
        EXTRA_INFO: np.array([{PROMPT_ID: i, **row.get("extra", {})} for i, row in enumerate(rows)], dtype=object),
        "raw_prompt": np.array([[{"role": "user", "content": row.get("prompt", "What is it?")}] for row in rows],
                               dtype=object),
    }
    return DataProto.from_dict(
        tensors={"prompts": P, "responses": R, "attention_mask": M, "input_ids": input_ids,
                 "position_ids": position_ids},
        non_tensors=non_tensors,
    )


def run_worker(config, data: DataProto) -> list[dict]:
    """Exactly what verl does with a RewardLoopWorker: construct it from the config and await compute_score_batch."""
    worker = RewardLoopWorker(config, reward_router_address=None)
    # verl's naive manager schedules on the loop captured at construction (the actor's loop under Ray): use it
    return worker.loop.run_until_complete(worker.compute_score_batch(data)), worker


def stack_like_verl(manager_cls, data: DataProto, outputs: list[dict]):
    """What RewardLoopManager.compute_rm_score does with the outputs (rm_scores + stacked reward_extra_info)."""
    scores = [o["reward_score"] for o in outputs]
    rm_scores = manager_cls.assemble_rm_scores(data, scores)
    infos = [o.get("reward_extra_info", {}) for o in outputs]
    keys = list(infos[0].keys())
    return rm_scores, {k: np.array([info[k] for info in infos]) for k in keys}


MATH_ROWS = [
    # correct + format
    {"response": "<think>Half of one.</think> The answer is \\boxed{\\frac{2}{4}}.", "gt": "0.5"},
    # correct, no think block
    {"response": "The answer is \\boxed{0.5}", "gt": "1/2"},
    # wrong + format
    {"response": "<think>Guess.</think> \\boxed{3}", "gt": "0.5"},
    # malformed box
    {"response": "<think>Hmm.</think> \\boxed{1", "gt": "1"},
    # multiple choice
    {"response": "<think>Option two.</think> \\boxed{(B)}", "gt": "B"},
    # units
    {"response": "<think>Measure.</think> \\boxed{5\\text{ cm}}", "gt": "5"},
]


# ====================================================================================================================
# Registration and construction
# ====================================================================================================================
def test_registered_names():
    assert get_reward_manager_cls("math_acc_format") is MathAccFormatRewardManager
    assert get_reward_manager_cls("r1v_acc") is R1VAccRewardManager
    assert get_reward_manager_cls("perception") is PerceptionRewardManager


def test_load_reward_manager_like_verl(tokenizer_dir, tokenizer):
    for name, cls in [("math_acc_format", MathAccFormatRewardManager), ("r1v_acc", R1VAccRewardManager),
                      ("perception", PerceptionRewardManager)]:
        mgr = load_reward_manager(make_config(tokenizer_dir, name), tokenizer, reward_router_address=None,
                                  reward_model_tokenizer=None)
        assert type(mgr) is cls


def test_importlib_source(tokenizer_dir, tokenizer):
    cfg = make_config(tokenizer_dir, name="R1VAccRewardManager", source="importlib",
                      module_path="pkg://verl_difficulty.rewards.managers")
    out, worker = run_worker(cfg, make_batch(tokenizer, [
        {"response": "<think>w</think> <answer>cat</answer>", "gt": "cat"}]))
    assert type(worker.reward_manager) is R1VAccRewardManager
    assert out[0]["reward_score"] == 1.0


# ====================================================================================================================
# Each manager through RewardLoopWorker
# ====================================================================================================================
def test_math_acc_format_through_reward_loop_worker(tokenizer_dir, tokenizer):
    data = make_batch(tokenizer, MATH_ROWS)
    outputs, worker = run_worker(make_config(tokenizer_dir, "math_acc_format"), data)
    assert type(worker.reward_manager) is MathAccFormatRewardManager
    got = [(o["reward_extra_info"][ACC], o["reward_extra_info"][FORMAT]) for o in outputs]
    assert got == [(1.0, 1.0), (1.0, 0.0), (0.0, 1.0), (0.0, 0.0), (1.0, 1.0), (1.0, 1.0)]
    assert [o["reward_score"] for o in outputs] == pytest.approx([1.0, 0.9, 0.1, 0.0, 1.0, 1.0])
    assert "malformed" in outputs[3]["reward_extra_info"]["reason"]
    assert outputs[0]["reward_extra_info"]["pred"] == "\\frac{2}{4}"

    rm_scores, extra = stack_like_verl(MathAccFormatRewardManager, data, outputs)
    assert set(extra) == {"acc", "format", "reason", "score", "pred"}
    # the reward sits on the last valid response token of each row (the EOS)
    resp_len = data.batch["attention_mask"][:, data.batch["prompts"].size(1):].sum(1)
    for i in range(len(data)):
        assert rm_scores[i, resp_len[i] - 1] == pytest.approx(outputs[i]["reward_score"])
        assert rm_scores[i].sum() == pytest.approx(outputs[i]["reward_score"])


def test_r1v_acc_through_reward_loop_worker(tokenizer_dir, tokenizer):
    rows = [
        {"response": "<think>One half.</think> <answer>$\\frac{1}{2}$</answer>", "gt": "<answer> 0.5 </answer>"},
        {"response": "<think>A cat.</think> <answer>Cat</answer>", "gt": "cat"},
        {"response": "<think>It is B.</think> <answer>(B)</answer>", "gt": "B"},
        {"response": "<think>Dog.</think> <answer>dog</answer>", "gt": "cat"},
        {"response": "no tags at all", "gt": "cat"},
    ]
    data = make_batch(tokenizer, rows)
    outputs, worker = run_worker(make_config(tokenizer_dir, "r1v_acc"), data)
    assert type(worker.reward_manager) is R1VAccRewardManager
    assert [o["reward_score"] for o in outputs] == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert [o["reward_extra_info"][ACC] for o in outputs] == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert [o["reward_extra_info"][FORMAT] for o in outputs] == [1.0, 1.0, 1.0, 1.0, 0.0]
    assert outputs[4]["reward_extra_info"]["reason"]
    _, extra = stack_like_verl(R1VAccRewardManager, data, outputs)
    assert extra[ACC].tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_perception_through_reward_loop_worker(tokenizer_dir, tokenizer):
    rows = [
        {"response": "<think>Box.</think> <answer>[1, 1, 10, 10]</answer>", "gt": [0, 0, 10, 10],
         "extra": {TASK_TYPE: "bbox"}},
        {"response": "<think>Box.</think> <answer>[10, 0, 20, 10]</answer>", "gt": [0, 0, 10, 10],
         "extra": {TASK_TYPE: "bbox"}},
        {"response": "<think>Two boxes.</think> <answer>[0, 0, 10, 10]</answer>",
         "gt": [[0, 0, 10, 10], [20, 20, 30, 30]], "extra": {TASK_TYPE: "bbox"}},
        {"response": "<think>Read.</think> <answer>HELLO WORLD</answer>", "gt": "hello world",
         "rm": {TASK_TYPE: "ocr"}},  # task type from reward_model
        {"response": "<think>Read.</think> <answer>xyz</answer>", "gt": "hello world", "extra": {TASK_TYPE: "ocr"}},
        {"response": "<think>Count.</think> <answer>three</answer>", "gt": "3", "extra": {TASK_TYPE: "count"}},
        {"response": "<think>Count.</think> <answer>4</answer>", "gt": 3, "extra": {TASK_TYPE: "count"}},
        {"response": "<think>Color.</think> <answer>Red</answer>", "gt": "red", "extra": {TASK_TYPE: "color"}},
        {"response": "<think>Sum.</think> <answer>\\frac{6}{2}</answer>", "gt": "3", "extra": {TASK_TYPE: "arith"}},
        {"response": "<think>No type.</think> \\boxed{7}", "gt": "7"},
    ]
    data = make_batch(tokenizer, rows)
    outputs, worker = run_worker(make_config(tokenizer_dir, "perception"), data)
    assert type(worker.reward_manager) is PerceptionRewardManager
    acc = [o["reward_extra_info"][ACC] for o in outputs]
    assert acc == [1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    assert [o["reward_score"] for o in outputs] == pytest.approx([1.0, 0.0, 0.5, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0])
    info = [o["reward_extra_info"] for o in outputs]
    assert info[0]["iou"] == pytest.approx(81 / 100) and info[0]["similarity"] is None
    assert info[3]["similarity"] == 1.0 and info[3]["iou"] is None
    assert info[5]["iou"] is None and info[5]["similarity"] is None
    _, extra = stack_like_verl(PerceptionRewardManager, data, outputs)
    assert set(extra) == {"acc", "format", "reason", "score", "pred", "iou", "similarity"}


def test_naive_manager_with_plugin_function(tokenizer_dir, tokenizer):
    """The function route: verl's naive manager + reward.custom_reward_function (pkg:// path, reward_kwargs)."""
    data = make_batch(tokenizer, MATH_ROWS[:3])
    cfg = make_config(tokenizer_dir, "naive", custom_fn=("pkg://verl_difficulty.rewards.functions", "math_acc_format"),
                      custom_kwargs={"format_weight": 0.2, "acc_weight": 0.8})
    outputs, worker = run_worker(cfg, data)
    assert type(worker.reward_manager).__name__ == "NaiveRewardManager"
    assert [o["reward_score"] for o in outputs] == pytest.approx([1.0, 0.8, 0.2])
    assert [o["reward_extra_info"][ACC] for o in outputs] == [1.0, 1.0, 0.0]


def test_functions_directly():
    r = functions.math_acc_format("src", "<think>w</think>\\boxed{1/2}", "0.5")
    assert r["score"] == pytest.approx(1.0) and r[ACC] == 1.0 and r[FORMAT] == 1.0
    r = functions.perception("src", "<answer>[0,0,10,10]</answer>", [0, 0, 10, 10], {TASK_TYPE: "bbox"})
    assert r["score"] == 1.0 and r["iou"] == 1.0
    r = functions.r1v_acc("src", b"\xff", "1")
    assert r["score"] == 0.0 and "UTF-8" in r["reason"]


# ====================================================================================================================
# Configuration
# ====================================================================================================================
def test_settings_precedence_and_per_manager_sections(tokenizer_dir):
    cfg = make_config(tokenizer_dir, reward_kwargs={"acc_weight": 0.7, "math_acc_format": {"format_weight": 0.3},
                                                    "overlong_buffer_cfg": None},
                      difficulty_reward={"acc_weight": 0.5, "timeout_s": 3})
    s = settings_from_config(cfg, "math_acc_format")
    assert (s.acc_weight, s.format_weight, s.timeout_s) == (0.7, 0.3, 3.0)
    s = settings_from_config(cfg, "r1v_acc")
    assert (s.acc_weight, s.format_weight) == (0.7, 0.0)
    assert settings_from_config(make_config(tokenizer_dir), "math_acc_format") == RewardSettings(
        acc_weight=0.9, format_weight=0.1, format_style="think_boxed", require_boxed=True)
    with pytest.raises(ValueError, match=r"reward_kwargs\.format_style: 'bogus' is not one of"):
        resolve_settings("math_acc_format", {"format_style": "bogus"})


def test_a_bad_setting_fails_the_manager_at_construction_with_the_dotted_key(tokenizer_dir, tokenizer):
    cfg = make_config(tokenizer_dir, "math_acc_format", reward_kwargs={"math_acc_format": {"acc_wieght": 0.8}})
    with pytest.raises(ConfigError, match=r"unknown setting reward\.reward_kwargs\.math_acc_format\.acc_wieght"):
        load_reward_manager(cfg, tokenizer)
    cfg = make_config(tokenizer_dir, "r1v_acc", difficulty_reward={"require_boxed": "yes"})
    with pytest.raises(ConfigError, match=r"difficulty\.reward\.require_boxed: expected true/false, got str 'yes'"):
        load_reward_manager(cfg, tokenizer)
    # verl's DAPO manager reads these from the same dict: allowed, ignored
    cfg = make_config(tokenizer_dir, "r1v_acc", reward_kwargs={"overlong_buffer_cfg": {"enable": False},
                                                               "max_resp_len": 512})
    assert type(load_reward_manager(cfg, tokenizer)) is R1VAccRewardManager


def test_configured_weights_and_tags_through_worker(tokenizer_dir, tokenizer):
    rows = [{"response": "Half.</reason> \\boxed{0.5}", "gt": "1/2"}]
    cfg = make_config(tokenizer_dir, reward_kwargs={"acc_weight": 0.5, "format_weight": 0.5,
                                                    "think_open": "<reason>", "think_close": "</reason>",
                                                    "require_think_open": False})
    outputs, _ = run_worker(cfg, make_batch(tokenizer, rows))
    assert outputs[0]["reward_score"] == pytest.approx(1.0)
    assert outputs[0]["reward_extra_info"][FORMAT] == 1.0


# ====================================================================================================================
# Hostile output through the real loop
# ====================================================================================================================
def test_hostile_outputs_through_worker(tokenizer_dir, tokenizer):
    ff = tokenizer.convert_tokens_to_ids("ÿ")  # the byte-level token of the lone byte 0xFF
    rows = [
        {"response": "<think>w</think> \\boxed{10^{10^{10}}}", "gt": "5"},  # sympy hangs in C
        {"response": "", "gt": "5"},  # empty response (just EOS)
        {"response": "<placeholder>", "gt": "5"},  # invalid UTF-8 bytes, decoded to U+FFFD by the tokenizer
        {"response": "<think>" + "blah " * 2000 + "</think> \\boxed{5}", "gt": "5"},  # long output
        {"response": "<think>w</think> \\boxed{5}", "gt": "5"},
    ]
    raw = [None, None, [ff, ff, ff, tokenizer.eos_token_id], None, None]
    data = make_batch(tokenizer, rows, raw_response_ids=raw)
    cfg = make_config(tokenizer_dir, reward_kwargs={"timeout_s": 1.5, "max_chars": 1000})
    import time

    t = time.monotonic()
    outputs, _ = run_worker(cfg, data)
    assert time.monotonic() - t < 30
    info = [o["reward_extra_info"] for o in outputs]
    assert outputs[0]["reward_score"] == pytest.approx(0.1) and "timeout" in info[0]["reason"]
    assert outputs[1]["reward_score"] == 0.0 and info[1]["reason"] == "empty response"
    assert outputs[2]["reward_score"] == 0.0 and info[2]["reason"]
    assert outputs[3]["reward_score"] == pytest.approx(1.0)  # format on the full text, answer in the kept tail
    assert outputs[4]["reward_score"] == pytest.approx(1.0)  # the batch goes on after a timeout


def test_run_single_never_raises(tokenizer_dir, tokenizer):
    mgr = load_reward_manager(make_config(tokenizer_dir, "perception"), tokenizer)
    data = make_batch(tokenizer, [{"response": "<answer>1</answer>", "gt": "1"}])
    del data.non_tensor_batch["reward_model"]
    out = asyncio.run(mgr.run_single(data[0:1]))
    assert out["reward_score"] == 0.0 and out["reward_extra_info"]["reason"]
    assert set(out["reward_extra_info"]) == {"acc", "format", "reason", "score", "pred", "iou", "similarity"}
    bad = DataProto.from_dict(tensors={"responses": torch.zeros(1, 3, dtype=torch.long)})
    out = asyncio.run(mgr.run_single(bad))
    assert out["reward_score"] == 0.0 and "reward manager error" in out["reward_extra_info"]["reason"]


def test_agent_loop_shaped_input(tokenizer_dir, tokenizer):
    """The shape AgentLoopWorker._compute_score sends: unpadded single row, kwargs as object arrays, tool fields."""
    prompt = tokenizer.encode("What is one half?", add_special_tokens=False)
    resp = tokenizer.encode("<think>ok</think> \\boxed{0.5}", add_special_tokens=False) + [tokenizer.eos_token_id]
    p, r = torch.tensor([prompt]), torch.tensor([resp])
    data = DataProto.from_dict(
        tensors={"prompts": p, "responses": r, "input_ids": torch.cat([p, r], 1),
                 "attention_mask": torch.ones(1, p.size(1) + r.size(1), dtype=torch.long),
                 "position_ids": torch.arange(p.size(1) + r.size(1)).unsqueeze(0)},
        non_tensors={"data_source": np.array(["s"], dtype=object),
                     "reward_model": np.array([{"ground_truth": "1/2"}], dtype=object),
                     EXTRA_INFO: np.array([{PROMPT_ID: 3}], dtype=object),
                     "__num_turns__": np.array([2]), "tool_extra_fields": np.array([{}], dtype=object)},
    )
    mgr = load_reward_manager(make_config(tokenizer_dir, "math_acc_format"), tokenizer)
    out = asyncio.run(mgr.run_single(data))
    assert out["reward_score"] == pytest.approx(1.0)


# ====================================================================================================================
# verl's RewardLoopManager with RewardLoopWorker Ray actors (what the trainer builds)
# ====================================================================================================================
def test_reward_loop_manager_with_ray_actors(tokenizer_dir, tokenizer):
    ray = pytest.importorskip("ray")
    from verl.experimental.reward_loop import RewardLoopManager

    started = False
    if not ray.is_initialized():
        # the actors must import the plugin's managers: the plugin entry point does it in every process that imports
        # verl; VERL_USE_EXTERNAL_MODULES (verl's own hook) makes this test independent of the entry point
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"VERL_USE_EXTERNAL_MODULES": "verl_difficulty.rewards.managers",
                                           "TOKENIZERS_PARALLELISM": "false"}})
        started = True
    try:
        rows = MATH_ROWS + [{"response": "<think>w</think> \\boxed{10^{10^{10}}}", "gt": "5"}]
        data = make_batch(tokenizer, rows)
        cfg = make_config(tokenizer_dir, "math_acc_format", reward_kwargs={"timeout_s": 2.0})
        manager = RewardLoopManager(cfg)  # RewardLoopWorker actors, round-robin over the CPU nodes
        out = manager.compute_rm_score(data)  # pads, chunks over workers, ray.get, assembles rm_scores
        assert out.batch["rm_scores"].sum(-1).tolist() == pytest.approx([1.0, 0.9, 0.1, 0.0, 1.0, 1.0, 0.1])
        assert out.meta_info["reward_extra_keys"] == ["acc", "format", "reason", "score", "pred"]
        assert out.non_tensor_batch[ACC].tolist() == [1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0]
        assert "timeout" in out.non_tensor_batch["reason"][6]
        # the agent-loop path: one trajectory per remote compute_score call on a worker handle
        worker = manager.reward_loop_worker_handles[0]
        one = ray.get(worker.compute_score.remote(data[0:1]), timeout=120)
        assert one["reward_score"] == pytest.approx(1.0) and one["reward_extra_info"][ACC] == 1.0
        for w in manager.reward_loop_workers:
            ray.kill(w)
    finally:
        if started:
            ray.shutdown()


# ====================================================================================================================
# Identical answers and long OCR answers: correct and fast in every manager
# ====================================================================================================================
HUGE = "10^{10^{10^{10}}}"  # math-verify parses it for ever, also against the identical ground truth


@pytest.mark.parametrize(
    "name, rows, expected",
    [
        ("math_acc_format", [{"response": "<think>w</think> \\boxed{" + HUGE + "}", "gt": "\\boxed{" + HUGE + "}"},
                             {"response": "\\boxed{" + HUGE + "}", "gt": HUGE}], [1.0, 0.9]),  # format still judged
        ("r1v_acc", [{"response": "<think>w</think> \\boxed{" + HUGE + "}", "gt": "\\boxed{" + HUGE + "}"},
                     {"response": "<think>w</think> <answer>" + HUGE + "</answer>", "gt": HUGE}], [1.0, 1.0]),
        ("perception", [{"response": "<think>w</think> <answer>" + HUGE + "</answer>", "gt": HUGE,
                         "extra": {TASK_TYPE: "math"}},
                        {"response": "<think>w</think> <answer>" + "Lorem ipsum dolor " * 400 + "</answer>",
                         "gt": "lorem ipsum dolor " * 400, "extra": {TASK_TYPE: "ocr"}},
                        {"response": "<think>w</think> <answer>" + "Lorem ipsum dolor " * 399 + "Lorem ipsum dolo"
                         + "</answer>", "gt": "lorem ipsum dolor " * 400, "extra": {TASK_TYPE: "ocr"}}],
         [1.0, 1.0, 1.0]),
    ],
)
def test_identical_and_long_answers_do_not_time_out_in_any_manager(tokenizer_dir, tokenizer, name, rows, expected):
    limit = 2.0
    worker = RewardLoopWorker(make_config(tokenizer_dir, name, reward_kwargs={"timeout_s": limit}),
                              reward_router_address=None)  # the manager starts (and pings) its grader processes
    data = make_batch(tokenizer, rows)
    outputs = worker.loop.run_until_complete(worker.compute_score_batch(data))
    assert [o["reward_score"] for o in outputs] == pytest.approx(expected)
    # no timeout (it would score 0 with reason "timeout"): each response graded within the limit
    assert all(o["reward_extra_info"][ACC] == 1.0 and o["reward_extra_info"]["reason"] == "" for o in outputs)
    if name == "perception":
        sims = [o["reward_extra_info"]["similarity"] for o in outputs[1:]]
        assert sims == pytest.approx([1.0, 1 - 1 / 7199])  # normalised: 7199 and 7198 characters, one deletion
