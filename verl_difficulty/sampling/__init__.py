"""The difficulty sampler: online pass-rate estimates, drawing modes, curricula and P2 difficulty hints."""
