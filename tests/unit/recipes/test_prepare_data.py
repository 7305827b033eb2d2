"""The recipes' prepare_data.py scripts on small local stand-ins written in each dataset's released format, and the
shared conversion module (verl_difficulty.data.convert) they call."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from verl_difficulty.data import convert
from verl_difficulty.data.rows import IMAGE_PLACEHOLDER, open_image, prepare_row, validate_row

ROOT = Path(__file__).resolve().parents[3]
SCRIPTS = {name: ROOT / "recipes" / name / "prepare_data.py"
           for name in ("p1_pism_cmab", "p2_difficulty_prior", "p3_durian", "p4_rap")}
BOXED_INSTRUCTION = r"The final answer MUST BE put in \boxed{}."


# --------------------------------------------------------------------------------------------------------------------
# Stand-ins in the released formats
# --------------------------------------------------------------------------------------------------------------------
def image_bytes(seed: int, fmt: str = "PNG", size=(12, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (seed * 37 % 256, seed * 91 % 256, 120)).save(buf, format=fmt)
    return buf.getvalue()


def save_image(path: Path, seed: int, fmt: str = "PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(seed, fmt))
    return path


def hf_release(root: Path, splits: dict[str, int], broken: dict | None = None) -> Path:
    """A Hugging Face problem/answer/images release (Geometry3K, K12-freeform): data/<split>-00000-of-00001.parquet
    written by `datasets` with Sequence(Image()). ``broken`` maps (split, row) to "image" (bytes PIL cannot decode)
    or "answer" (empty answer)."""
    import datasets

    features = datasets.Features({"images": datasets.Sequence(datasets.Image()), "problem": datasets.Value("string"),
                                  "answer": datasets.Value("string")})
    broken = broken or {}
    for split, n in splits.items():
        cols = {"images": [], "problem": [], "answer": []}
        for i in range(n):
            bad = broken.get((split, i))
            cols["images"].append([{"bytes": b"not an image" if bad == "image" else image_bytes(i), "path": None}])
            cols["problem"].append(f"<image>Find x in figure {split} {i}.")
            cols["answer"].append("" if bad == "answer" else f"{i + 1}")
        (root / "data").mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_dict(cols, features=features).to_parquet(
            str(root / "data" / f"{split}-00000-of-00001.parquet"))
    return root


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def mm_eureka_release(root: Path) -> Path:
    """dataset.jsonl + K12/ and MMPR/images/ folders, as the MM-Eureka release unzips."""
    for i in range(8):
        save_image(root / "K12" / f"k{i}.png", i)
    save_image(root / "MMPR" / "images" / "ai2d" / "c.png", 50)
    prefix = ("You should first thinks about the reasoning process in the mind and then provides the user with the "
              "answer.")
    recs = [
        {"id": "k12_0", "conversations": [{"role": "user", "content": "What is 2 + 3?"}], "answer": "5",
         "image_urls": ["K12/k0.png"]},
        {"id": "k12_1", "conversations": [{"role": "system", "content": "be brief"},
                                          {"role": "user", "content": prefix + " Compute half of one."}],
         "answer": "\\frac{1}{2}", "image_urls": ["/inspire/hdd/user/report_data/K12/k1.png"]},
        {"id": "mmpr_2", "message": json.dumps([{"role": "user", "content": [
            {"type": "image", "image": "file://" + str(root / "MMPR" / "images" / "ai2d" / "c.png")},
            {"type": "text", "text": "How many cats are in the image?"}]}]), "answer": "3"},
        {"id": "k12_3", "conversations": [{"role": "user", "content": "Lost image?"}], "answer": "1",
         "image_urls": ["K12/missing.png"]},
        {"id": "k12_4", "conversations": [{"role": "user", "content": "No answer?"}], "answer": "",
         "image_urls": ["K12/k4.png"]},
        "{not json",
    ] + [{"id": f"k12_{i}", "conversations": [{"role": "user", "content": f"Question {i}?"}], "answer": str(i),
          "image_urls": [f"K12/k{i}.png"]} for i in (5, 6, 7)]
    write_jsonl(root / "dataset.jsonl", recs)
    return root


def run(script: str, *args, env_home: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    if env_home is not None:
        env["HF_HOME"] = str(env_home)
    return subprocess.run([sys.executable, str(SCRIPTS[script]), "--no-progress", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=120)


def outputs(out: Path) -> tuple[dict, dict]:
    rows = {s: pq.read_table(out / f"{s}.parquet").to_pylist() for s in ("train", "val")}
    return rows, json.loads((out / convert.SUMMARY_FILE).read_text())


def check_rows(rows: list[dict]) -> None:
    """Every row validates, has one <image> per image, decodes, and is read by the scoring row loader."""
    for k, row in enumerate(rows):
        assert validate_row(row) is None
        user = [m for m in row["prompt"] if m["role"] == "user"]
        assert len(user) == 1 and user[0]["content"].count(IMAGE_PLACEHOLDER) == len(row["images"]) >= 1
        for im in row["images"]:
            assert open_image(im).size[0] > 0 and Image.open(io.BytesIO(im["bytes"])).format in ("PNG", "JPEG")
        scoring = prepare_row(row, k)
        assert scoring.row_id == row["extra_info"]["index"] and scoring.images[0].mode == "RGB"
        assert scoring.ground_truth == row["reward_model"]["ground_truth"] == row["extra_info"]["answer"]


def run_instruction(script: str) -> str:
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"prep_{script}", SCRIPTS[script])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.INSTRUCTION


def indices(rows: dict) -> list[int]:
    return [r["extra_info"]["index"] for s in ("train", "val") for r in rows[s]]


# --------------------------------------------------------------------------------------------------------------------
# P3 Durian (Geometry3K)
# --------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def geometry3k(tmp_path_factory) -> Path:
    return hf_release(tmp_path_factory.mktemp("geometry3k"), {"train": 6, "validation": 2, "test": 3},
                      broken={("train", 2): "image", ("train", 4): "answer"})


def test_p3_geometry3k_rows_ids_and_bad_records(geometry3k, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    for out in (first, second):
        proc = run("p3_durian", "--source", geometry3k, "--output", out)
        assert proc.returncode == 0, proc.stderr
    rows, summary = outputs(first)
    again, _ = outputs(second)
    assert [r["extra_info"]["source_row"] for r in rows["train"]] == [0, 1, 3, 5]
    assert [r["extra_info"]["index"] for r in rows["val"]] == [2 * convert.SPLIT_STRIDE + i for i in range(3)]
    assert indices(rows) == indices(again) and len(set(indices(rows))) == 7
    assert (first / "train.parquet").read_bytes() == (second / "train.parquet").read_bytes()
    for row in rows["train"] + rows["val"]:
        ei = row["extra_info"]
        assert row["reward_model"]["ground_truth"] == str(ei["source_row"] + 1)  # the source's answer
        assert row["data_source"] == "hiyouga/geometry3k" and ei["split"] in ("train", "val")
        assert row["prompt"][-1]["content"] == f"{ei['question']} " + run_instruction("p3_durian")
        assert ei["question"].startswith(IMAGE_PLACEHOLDER)
    check_rows(rows["train"] + rows["val"])
    assert summary["written"] == {"train": 4, "val": 3}
    assert summary["skipped"] == {convert.ANSWER_MISSING: 1, convert.IMAGE_UNREADABLE: 1}
    assert {(r["split"], r["row"], r["reason"]) for r in summary["skipped_rows"]} == {
        ("train", 2, convert.IMAGE_UNREADABLE), ("train", 4, convert.ANSWER_MISSING)}
    assert "skipped: 2 source rows" in proc.stdout and "train:2" in proc.stdout


def test_p3_limit_val_split_and_val_size(geometry3k, tmp_path):
    proc = run("p3_durian", "--source", geometry3k, "--output", tmp_path / "o", "--limit", 3,
               "--val-split", "validation")
    assert proc.returncode == 0, proc.stderr
    rows, summary = outputs(tmp_path / "o")
    assert [r["extra_info"]["index"] for r in rows["train"]] == [0, 1]  # the first 3 records, record 2 is broken
    assert [r["extra_info"]["index"] for r in rows["val"]] == [convert.SPLIT_STRIDE, convert.SPLIT_STRIDE + 1]
    proc = run("p3_durian", "--source", geometry3k / "data" / "train-00000-of-00001.parquet", "--output",
               tmp_path / "p", "--val-size", 2, "--seed", 3)
    assert proc.returncode == 0, proc.stderr
    rows, summary = outputs(tmp_path / "p")  # one file, no test split: records held out from train
    assert summary["written"]["val"] == len(rows["val"]) <= 2 and "held out" in summary["val_from"]
    assert not set(indices({"train": rows["train"], "val": []})) & {r["extra_info"]["index"] for r in rows["val"]}


# --------------------------------------------------------------------------------------------------------------------
# P2 difficulty prior (Geometry3K or K12-freeform)
# --------------------------------------------------------------------------------------------------------------------
def test_p2_k12_and_geometry3k_detection(geometry3k, tmp_path):
    k12 = hf_release(tmp_path / "k12-freeform", {"train": 4, "mini_train": 2, "test": 2},
                     broken={("train", 1): "image"})
    proc = run("p2_difficulty_prior", "--source", k12, "--output", tmp_path / "k")
    assert proc.returncode == 0, proc.stderr
    assert "dataset: k12" in proc.stdout
    rows, summary = outputs(tmp_path / "k")
    assert [r["extra_info"]["index"] for r in rows["train"]] == [convert.DATASET_STRIDE + i for i in (0, 2, 3)]
    assert {r["data_source"] for r in rows["train"]} == {"xyliu6/k12-freeform"}
    assert summary["skipped"] == {convert.IMAGE_UNREADABLE: 1}
    check_rows(rows["train"] + rows["val"])
    assert all(r["prompt"][-1]["content"].endswith(BOXED_INSTRUCTION) for r in rows["train"])

    proc = run("p2_difficulty_prior", "--source", k12, "--output", tmp_path / "m", "--train-split", "mini_train")
    assert proc.returncode == 0, proc.stderr
    rows, _ = outputs(tmp_path / "m")
    assert [r["extra_info"]["index"] for r in rows["train"]] == [
        convert.DATASET_STRIDE + 3 * convert.SPLIT_STRIDE + i for i in (0, 1)]

    proc = run("p2_difficulty_prior", "--source", geometry3k, "--output", tmp_path / "g")  # detected by its splits
    assert proc.returncode == 0 and "dataset: geometry3k" in proc.stdout, proc.stderr
    rows, _ = outputs(tmp_path / "g")
    assert [r["extra_info"]["index"] for r in rows["train"]] == [0, 1, 3, 5]


# --------------------------------------------------------------------------------------------------------------------
# P4 RAP (MM-Eureka)
# --------------------------------------------------------------------------------------------------------------------
def test_p4_mm_eureka_release(tmp_path):
    src = mm_eureka_release(tmp_path / "MM-Eureka-Dataset")
    runs = []
    for out in ("a", "b"):
        proc = run("p4_rap", "--source", src, "--output", tmp_path / out, "--val-size", 2, "--seed", 3)
        assert proc.returncode == 0, proc.stderr
        runs.append(outputs(tmp_path / out))
    (rows, summary), (again, _) = runs
    assert summary["written"] == {"train": 4, "val": 2}
    assert summary["skipped"] == {convert.ANSWER_MISSING: 1, convert.IMAGE_MISSING: 1, convert.RECORD_MALFORMED: 1}
    assert sorted((r["row"], r["reason"]) for r in summary["skipped_rows"]) == [
        (3, convert.IMAGE_MISSING), (4, convert.ANSWER_MISSING), (5, convert.RECORD_MALFORMED)]
    assert indices(rows) == indices(again) and sorted(indices(rows)) == [0, 1, 2, 6, 7, 8]
    every = {r["extra_info"]["index"]: r for s in ("train", "val") for r in rows[s]}
    assert every[1]["extra_info"]["question"] == "<image>Compute half of one."  # MM-Eureka's instruction removed
    assert every[1]["reward_model"]["ground_truth"] == "\\frac{1}{2}" and every[1]["extra_info"]["source_id"] == "k12_1"
    assert every[1]["images"][0]["bytes"] == (src / "K12" / "k1.png").read_bytes()  # foreign absolute prefix
    assert every[2]["extra_info"]["question"] == "<image>How many cats are in the image?"  # file:// image part
    assert all(len(r["prompt"]) == 1 and r["prompt"][0]["content"].endswith(BOXED_INSTRUCTION) for r in every.values())
    check_rows(list(every.values()))

    proc = run("p4_rap", "--source", src / "dataset.jsonl", "--output", tmp_path / "c", "--val-size", 2,
               "--seed", 3, "--limit", 3)
    assert proc.returncode == 0, proc.stderr
    rows, summary = outputs(tmp_path / "c")
    assert sum(summary["written"].values()) == 3 and set(indices(rows)) == {0, 1, 2}
    assert summary["written"]["val"] == 1  # the held-out slice is capped at half the records read


# --------------------------------------------------------------------------------------------------------------------
# P1 PISM + CMAB (the official scripts' pool and GRPO formats, Geometry3K)
# --------------------------------------------------------------------------------------------------------------------
def test_p1_pool_swift_and_geometry3k_formats(geometry3k, tmp_path):
    pool = tmp_path / "pool"
    save_image(pool / "images" / "a.png", 1)
    save_image(pool / "images" / "b.jpg", 2, "JPEG")
    save_image(pool / "images" / "c.gif", 3, "GIF")
    recs = [
        {"id": "m0", "ability": "math", "prompt": "<image>What is x?", "ground_truth": "\\boxed{4}",
         "image_paths": [str(pool / "images" / "a.png")]},
        {"id": "o1", "ability": "ocr", "prompt": "<image>Read the text.", "ground_truth": "HELLO",
         "image_paths": ["images/b.jpg"]},
        {"id": "g2", "ability": "cv_grounding", "prompt": "<image><image>Where is the dog?",
         "ground_truth": "[1, 2, 3, 4]", "image_paths": ["images/a.png"]},
        {"id": "c3", "ability": "counting", "prompt": "How many dots?", "ground_truth": "7",
         "image_paths": ["images/c.gif"]},
        {"id": "m4", "ability": "math", "prompt": "<image>Area?", "ground_truth": "12", "image_paths": []},
    ] + [{"id": f"m{i}", "ability": "math", "prompt": "<image>Sum?", "ground_truth": str(i),
          "image_paths": ["images/a.png"]} for i in (5, 6, 7)]
    write_jsonl(pool / "pool.jsonl", recs)
    proc = run("p1_pism_cmab", "--source", pool / "pool.jsonl", "--output", tmp_path / "o", "--val-size", 1)
    assert proc.returncode == 0 and "format: pool" in proc.stdout, proc.stderr
    rows, summary = outputs(tmp_path / "o")
    assert summary["skipped"] == {convert.IMAGE_MISSING: 1, convert.PLACEHOLDER_MISMATCH: 1}
    every = {r["extra_info"]["source_id"]: r for s in ("train", "val") for r in rows[s]}
    assert sorted(every) == ["c3", "m0", "m5", "m6", "m7", "o1"] and len(rows["val"]) == 1
    assert {k: every[k]["extra_info"]["task_type"] for k in ("m0", "o1", "c3")} == {
        "m0": "math", "o1": "ocr", "c3": "count"}
    assert every["m0"]["reward_model"]["ground_truth"] == "\\boxed{4}" and every["o1"]["ability"] == "ocr"
    assert every["o1"]["images"][0]["bytes"] == (pool / "images" / "b.jpg").read_bytes()  # JPEG kept as is
    assert Image.open(io.BytesIO(every["c3"]["images"][0]["bytes"])).format == "PNG"  # GIF re-encoded
    assert every["c3"]["extra_info"]["question"] == "<image>How many dots?"
    for row in every.values():
        assert row["prompt"][0]["role"] == "system" and "<answer> and </answer>" in row["prompt"][0]["content"]
        assert "visual reasoning" in row["prompt"][0]["content"] and row["prompt"][1]["content"].count("<image>") == 1
    check_rows(list(every.values()))

    swift = write_jsonl(tmp_path / "swift" / "mid_hard.jsonl", [
        {"images": [str(pool / "images" / "a.png")], "messages": [{"role": "user", "content": "<image>\nWhere?"}],
         "solution": "\\boxed{Google}"}])
    proc = run("p1_pism_cmab", "--source", swift, "--output", tmp_path / "s", "--task", "vpt")
    assert proc.returncode == 0 and "format: swift" in proc.stdout, proc.stderr
    rows, _ = outputs(tmp_path / "s")
    assert len(rows["train"]) == 1 and rows["train"][0]["reward_model"]["ground_truth"] == "\\boxed{Google}"
    assert "visual perception" in rows["train"][0]["prompt"][0]["content"]

    proc = run("p1_pism_cmab", "--source", geometry3k, "--output", tmp_path / "g")
    assert proc.returncode == 0 and "format: geometry3k" in proc.stdout, proc.stderr
    rows, summary = outputs(tmp_path / "g")
    assert summary["written"] == {"train": 4, "val": 3} and rows["train"][0]["data_source"] == "hiyouga/geometry3k"


# --------------------------------------------------------------------------------------------------------------------
# Exit status and help
# --------------------------------------------------------------------------------------------------------------------
def test_nothing_written_fails_and_leaves_old_files(tmp_path):
    src = write_jsonl(tmp_path / "dataset.jsonl", [
        {"id": "a", "conversations": [{"role": "user", "content": "q"}], "answer": "1", "image_urls": ["gone.png"]}])
    out = tmp_path / "out"
    out.mkdir()
    (out / "train.parquet").write_bytes(b"old")
    proc = run("p4_rap", "--source", src, "--output", out)
    assert proc.returncode == 1 and convert.IMAGE_MISSING in proc.stderr
    assert (out / "train.parquet").read_bytes() == b"old" and not (out / "val.parquet").exists()
    assert sorted(p.name for p in out.iterdir()) == ["train.parquet"]  # no temporary file left behind
    proc = run("p3_durian", "--source", tmp_path / "nowhere", "--output", out)
    assert proc.returncode == 2 and "source not found" in proc.stderr
    proc = run("p3_durian", "--source", "hiyouga/geometry3k", "--output", out, env_home=tmp_path / "hf")  # offline
    assert proc.returncode == 2 and "cannot load 'hiyouga/geometry3k'" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["train.parquet"]


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_explains_every_option(script):
    proc = subprocess.run([sys.executable, str(SCRIPTS[script]), "--help"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0
    for option in ("--source", "--output", "--limit", "--val-size", "--seed"):
        assert option in proc.stdout
    assert "arXiv" in proc.stdout


# --------------------------------------------------------------------------------------------------------------------
# convert.py
# --------------------------------------------------------------------------------------------------------------------
def test_placeholders_answers_and_indices():
    assert convert.with_placeholders("What?", 2) == "<image><image>What?"
    assert convert.with_placeholders(" <image>\nWhat? ", 1) == "<image>\nWhat?"
    for question, kind in (("<image>a<image>", convert.PLACEHOLDER_MISMATCH), ("<image> ", convert.QUESTION_MISSING),
                           (None, convert.QUESTION_MISSING), (3, convert.RECORD_MALFORMED)):
        with pytest.raises(convert.RecordError) as e:
            convert.with_placeholders(question, 1)
        assert e.value.kind == kind
    assert [convert.answer_text(a) for a in (" 5 ", 3.0, 2.5, 7, ["x"], [1, 2], True)] == [
        "5", "3", "2.5", "7", "x", "[1, 2]", "True"]
    for bad in (None, "  ", float("nan"), []):
        with pytest.raises(convert.RecordError) as e:
            convert.answer_text(bad)
        assert e.value.kind in (convert.ANSWER_MISSING, convert.RECORD_MALFORMED)
    spec = convert.RowSpec("d", convert.PromptStyle(), index_base=convert.DATASET_STRIDE)
    assert convert.stable_index(spec, "test", 5) == convert.DATASET_STRIDE + 2 * convert.SPLIT_STRIDE + 5
    assert convert.split_offset("validation") == convert.split_offset("val") == convert.SPLIT_STRIDE
    odd = convert.split_offset("extra_split")
    assert odd == convert.split_offset("extra_split") and odd >= 16 * convert.SPLIT_STRIDE
    with pytest.raises(ValueError):
        convert.stable_index(spec, "train", convert.SPLIT_STRIDE)


def test_images_are_resolved_encoded_or_rejected(tmp_path):
    png = save_image(tmp_path / "root" / "K12" / "a.png", 1)
    bmp = save_image(tmp_path / "root" / "b.bmp", 2, "BMP")
    roots = [str(tmp_path / "root")]
    assert convert.resolve_image_path("/elsewhere/data/K12/a.png", roots) == str(png)
    assert convert.resolve_image_path("file://" + str(png), []) == str(png)
    assert convert.resolve_image_path("K12/none.png", roots) is None
    enc, pil = convert.encode_image("K12/a.png", roots)
    assert enc == {"bytes": png.read_bytes(), "path": "K12/a.png"} and pil.size == (12, 10)
    enc, _ = convert.encode_image({"bytes": bmp.read_bytes(), "path": None}, roots)
    assert enc["bytes"][:4] == b"\x89PNG"
    enc, _ = convert.encode_image(Image.new("RGB", (3, 3)), roots)
    assert open_image(enc).size == (3, 3)
    for entry, kind in (("K12/none.png", convert.IMAGE_MISSING), ({"bytes": b"xx", "path": None},
                                                                   convert.IMAGE_UNREADABLE),
                        ({"bytes": None, "path": None}, convert.IMAGE_MISSING),
                        ("https://example.com/a.png", convert.IMAGE_MISSING), (5, convert.RECORD_MALFORMED)):
        with pytest.raises(convert.RecordError) as e:
            convert.encode_image(entry, roots)
        assert e.value.kind == kind


def test_chat_question_and_make_row(tmp_path):
    question, images = convert.chat_question([
        {"role": "system", "content": "sys"},
        {"role": "user", "content": [{"type": "text", "text": "Look: "}, {"type": "image", "image": "file:///x.png"},
                                     {"type": "text", "text": " what?"}]},
        {"role": "assistant", "content": "answer"}])
    assert (question, images) == ("Look: <image> what?", ["file:///x.png"])
    assert convert.chat_question([{"from": "human", "value": "<image>hi"}, {"from": "gpt", "value": "x"}]) == (
        "<image>hi", [])
    spec = convert.RowSpec("toy", convert.PromptStyle(system_prompt="S", instruction="I"), ability="geo")
    record = convert.SourceRecord("Find y.", 9, [image_bytes(4)], source_id=17)
    row = convert.make_row(record, spec, split="test", out_split="val", position=3, roots=[])
    assert row["prompt"] == [{"role": "system", "content": "S"}, {"role": "user", "content": "<image>Find y. I"}]
    assert row["extra_info"] == {"index": 2 * convert.SPLIT_STRIDE + 3, "split": "val", "source_split": "test",
                                 "source_row": 3, "source_id": "17", "question": "<image>Find y.", "answer": "9",
                                 "task_type": "math"}
    assert row["ability"] == "geo" and row["reward_model"] == {"style": "rule", "ground_truth": "9"}
    with pytest.raises(convert.RecordError) as e:
        convert.make_row(convert.SourceRecord("q", "1", []), spec, split="train", out_split="train", position=0,
                         roots=[])
    assert e.value.kind == convert.IMAGE_MISSING


class ListSplits(convert.Splits):
    def __init__(self, records):
        self.records, self.roots, self.label = records, [], "list"

    def names(self):
        return ["train"]

    def count(self, split):
        return len(self.records) if split == "train" else 0

    def rows(self, split):
        return iter(self.records if split == "train" else [])


def test_prepare_holds_out_a_seeded_slice(tmp_path):
    records = [{"q": f"<image>q{i}", "a": str(i), "im": image_bytes(i)} for i in range(20)]
    read = lambda raw: convert.SourceRecord(raw["q"], raw["a"], [raw["im"]])  # noqa: E731
    job = convert.Job("toy", ListSplits(records), read, convert.RowSpec("toy", convert.PromptStyle()))
    vals = []
    for seed in (0, 0, 1):
        out = tmp_path / f"s{len(vals)}"
        summary = convert.prepare(job, str(out), val_size=5, seed=seed, progress=False)
        rows = {s: pq.read_table(out / f"{s}.parquet").to_pylist() for s in ("train", "val")}
        vals.append(sorted(r["extra_info"]["index"] for r in rows["val"]))
        assert summary.written == {"train": 15, "val": 5}
        assert sorted(vals[-1] + [r["extra_info"]["index"] for r in rows["train"]]) == list(range(20))
    assert vals[0] == vals[1] != vals[2]


def test_hub_splits_read_a_datasets_loadable_source(geometry3k, tmp_path):
    splits = convert.HubSplits(str(geometry3k), [], cache_dir=str(tmp_path / "cache"))
    assert splits.names() == ["test", "train", "validation"] and splits.count("train") == 6
    first = splits.first("train")
    assert first["images"][0]["bytes"] == image_bytes(0) and first["answer"] == "1"
