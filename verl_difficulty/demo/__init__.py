"""``verl-difficulty demo``: the whole flow on built-in data, on a CPU, in one command.

score -> select -> train -> report on a synthetic multimodal dataset whose difficulty is known per row:

1. ``data``: 4 tasks x 4 true difficulty levels (:mod:`verl_difficulty.data.synthetic`), or the user's parquet;
2. ``model``: a tiny Qwen2.5-VL built in code and warmed up so that its accuracy falls with the true level;
3. ``score``: every row scored with every scorer (pass@k, PISM, CDE, visual entropy, CMAB, ACE) on Ray;
4. ``select``: the training sets of P1, P2, P4, and their true-level mix vs random subsets of the same size;
5. ``train``: a few GRPO steps through stock verl ``main_ppo``, Durian (perceptual branch on) with the difficulty
   sampler, and the same steps with plain GRPO;
6. ``report``: the report of the scores and selections plus the demo's sections (agreement with the true difficulty,
   selection mixes, training curves from verl's tracker output).

One module per concern: :mod:`.settings` (options, stages, what each stage depends on), :mod:`.stages` (done-markers),
:mod:`.console` (console, log redirection, failures), :mod:`.workspace` (the folder), :mod:`.prepare` (data, model),
:mod:`.scoring`, :mod:`.selecting`, :mod:`.training`, :mod:`.reporting` (one stage each), :mod:`.analysis`
(Spearman, bootstrap, subset mixes), :mod:`.metrics` (reading verl's tracker output), :mod:`.sections` (the report's
demo sections), :mod:`.pipeline` (the driver).
"""

from verl_difficulty.demo.pipeline import run_demo
from verl_difficulty.demo.sections import demo_sections
from verl_difficulty.demo.settings import QUICK, STAGES, DemoSettings, make_settings

__all__ = ["DemoSettings", "QUICK", "STAGES", "demo_sections", "make_settings", "run_demo"]
