"""A user's own code, as a package outside secateurs: the model and data factories that recipes
name by import path (`user_code.models:residual_net`). Tests put `tests/` on PYTHONPATH."""
