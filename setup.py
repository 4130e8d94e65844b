"""Package layout that pyproject.toml cannot express: the example config and the systemd unit
live once, in ``config/`` and ``systemd/``, and are mapped into the wheel as the data packages
``rotatord._data.config`` and ``rotatord._data.systemd`` (``rotatord example-config`` and
``rotatord systemd-unit`` print them). Everything else is in pyproject.toml."""

from setuptools import find_packages, setup

DATA_DIRS = {"rotatord._data.config": "config", "rotatord._data.systemd": "systemd"}

setup(
    packages=[*find_packages(include=["rotatord", "rotatord.*"]), *DATA_DIRS],
    package_dir=DATA_DIRS,
    package_data={
        "rotatord._data.config": ["rotatord.example.toml"],
        "rotatord._data.systemd": ["rotatord.service"],
    },
    exclude_package_data={"rotatord._data.systemd": ["README.md"]},
)
