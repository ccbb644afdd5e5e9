"""Package list for the package-dir mapping in pyproject.toml.

`connectors/` and `processors/` live at the top of the repository so the layout shows the architecture, but
they install as `streamkit.connectors` and `streamkit.processors`. setuptools cannot discover mapped
subpackages on its own, so they are listed here from the folders themselves.
"""

from setuptools import find_packages, setup


def _mapped(folder: str, package: str) -> list[str]:
    return [package] + [f"{package}.{sub}" for sub in find_packages(folder)]


setup(
    packages=find_packages(include=["streamkit", "streamkit.*"])
    + _mapped("connectors", "streamkit.connectors")
    + _mapped("processors", "streamkit.processors"),
)
