"""Package list for setuptools (the rest of the metadata is in pyproject.toml): trustequiv and plugins, and
the config tree as the package ``trustequiv_conf``, which is the top-level ``conf/`` folder mapped in place
(no copy in the repository): each config group folder is a data subpackage, so its YAML files ship in the
wheel and Hydra finds them at ``pkg://trustequiv_conf`` (trustequiv.cli)."""

from setuptools import find_namespace_packages, find_packages, setup

CONF = "trustequiv_conf"

setup(
    packages=[
        *find_packages(include=["trustequiv", "trustequiv.*", "plugins", "plugins.*"]),
        CONF,
        *(f"{CONF}.{group}" for group in find_namespace_packages(where="conf", exclude=["*__pycache__*"])),
    ],
    package_dir={CONF: "conf"},
)
