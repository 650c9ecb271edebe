"""The one packaging fact pyproject.toml cannot state: conf/ stays at the top of the repo and
ships inside the package as cnnexp/conf (so an installed wheel finds its configs)."""

from setuptools import find_namespace_packages, find_packages, setup

CONF_GROUPS = [f"cnnexp.conf.{group}" for group in find_namespace_packages(where="conf")]

setup(
    packages=[*find_packages(include=["cnnexp*"]), "cnnexp.conf", *CONF_GROUPS],
    package_dir={"cnnexp.conf": "conf"},
    package_data={"": ["*.yaml"]},
)
