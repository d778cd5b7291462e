"""Package discovery for the one ``slimsplit`` distribution (everything else is in pyproject.toml).

``slimsplit`` is a namespace package spread over one folder per role: the shared core in ``slimsplit/``, the device
in ``edge/slimsplit/edge/``, the host in ``server/slimsplit/server/``, the tools that drive both in
``apps/slimsplit/apps/``. Each role folder found is packaged; a build context that lacks one (the edge image copies
only the core and ``edge/``) gives a wheel without it.
"""

from pathlib import Path

from setuptools import find_namespace_packages, setup

HERE = Path(__file__).resolve().parent
ROLE_FOLDERS = ("edge", "server", "apps")


def _discover() -> tuple[list[str], dict[str, str]]:
    packages = list(find_namespace_packages(where=str(HERE), include=["slimsplit", "slimsplit.*"]))
    package_dir: dict[str, str] = {}
    for role in ROLE_FOLDERS:
        root = HERE / role / "slimsplit" / role
        if not root.is_dir():
            continue
        package_dir[f"slimsplit.{role}"] = f"{role}/slimsplit/{role}"
        found = find_namespace_packages(where=str(HERE / role), include=[f"slimsplit.{role}", f"slimsplit.{role}.*"])
        packages.extend(found)
    return sorted({name for name in packages if "__pycache__" not in name}), package_dir


PACKAGES, PACKAGE_DIR = _discover()
setup(packages=PACKAGES, package_dir=PACKAGE_DIR)
