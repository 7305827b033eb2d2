"""Models: batched HF generation with per-row seeds, the tiny Qwen2.5-VL built in code, and its warm-up."""
