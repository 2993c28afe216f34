"""Adapters that let RL trainers drive userlm-env: TRL, OpenEnv, verifiers, SkyRL-gym and verl.

Each module imports its trainer's package, installed by the extra of the same name
(``pip install "userlm-env[trl]"``...); importing this package imports none of them.
"""
