"""The installed distribution (`pip install .`, the Docker image) carries every package of the tree."""

from __future__ import annotations

from setuptools.config.setupcfg import read_configuration

from tests.support.paths import ROOT


def test_every_package_in_the_tree_is_installed() -> None:
    options = read_configuration(ROOT / "setup.cfg", ignore_option_errors=False)["options"]
    installed = set(options["packages"])
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("agent", "addons", "ops_api")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert on_disk - installed == set(), "packages missing from setup.cfg's [options.packages.find]"
