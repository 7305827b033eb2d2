"""``verl-difficulty doctor``: check that verl loads the plugin (:func:`verl_difficulty.doctor.run_doctor`)."""

from __future__ import annotations


def _run(args) -> int:
    from verl_difficulty.doctor import run_doctor

    return run_doctor(ray_worker=not args.no_ray)


def add_parser(sub) -> None:
    p = sub.add_parser("doctor", help="check that verl loads the plugin (fresh process and Ray worker)")
    p.add_argument("--no-ray", action="store_true", help="skip the Ray worker check")
    p.set_defaults(fn=_run)
