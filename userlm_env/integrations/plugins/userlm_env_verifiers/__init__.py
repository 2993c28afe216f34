"""The verifiers plugin ``userlm-env-verifiers``: ``vf-eval`` imports a plugin by its top-level
name, so ``pyproject.toml`` installs this folder as the top-level module
``userlm_env_verifiers`` (``vf-eval userlm-env-verifiers ...``). It is
:mod:`userlm_env.integrations.verifiers` under that name."""

from userlm_env.integrations.verifiers import *  # noqa: F403
from userlm_env.integrations.verifiers import __all__ as __all__
