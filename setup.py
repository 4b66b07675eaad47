"""Builds the `libleak` wheel: the Rust `libleak` command and the `libleak.so` interposer,
placed side by side in the package's `_bin` directory (where the command looks for the
interposer), and the Python package around them.

Why setuptools-rust and not maturin: the wheel needs two artifacts of two workspace crates,
a binary (reporter/) and a cdylib (interposer/). maturin builds one crate per wheel, with one
kind of binding, so it could ship the command but not the preload library beside it;
setuptools-rust builds any number of Rust targets in one `pip install .`.

Must never change what cargo builds (no features, no flags of its own): the packaged files are
the workspace's release build, so that `libleak --version` and the wheel's version agree.
"""

import os
import re

from setuptools import setup
from setuptools_rust import Binding, RustExtension, Strip, build_rust

try:
    from wheel.bdist_wheel import bdist_wheel
except ImportError:  # wheel >= 0.44 moved it into setuptools
    from setuptools.command.bdist_wheel import bdist_wheel

HERE = os.path.dirname(os.path.abspath(__file__))


def cargo_version():
    """The `[workspace.package]` version of Cargo.toml, which the Rust binaries report."""
    path = os.path.join(HERE, "Cargo.toml")
    with open(path, encoding="utf-8") as cargo:
        text = cargo.read()
    section = re.search(r"^\[workspace\.package\]\s*$(.*?)^\[", text, re.S | re.M)
    version = section and re.search(r'^version\s*=\s*"([^"]+)"', section.group(1), re.M)
    if not version:
        raise RuntimeError(f"no [workspace.package] version in {path}")
    return version.group(1)


class build_rust_named(build_rust):
    """Installs the interposer as `libleak.so`, the name the reporter knows libleak's own
    frames by, instead of a Python extension module's name."""

    def get_dylib_ext_path(self, ext, target_fname):
        path = super().get_dylib_ext_path(ext, target_fname)
        if ext.binding is Binding.NoBinding:
            return os.path.join(os.path.dirname(path), "libleak.so")
        return path


class bdist_wheel_any_python(bdist_wheel):
    """Tags the wheel py3-none-<platform>: nothing in it links against libpython, so one
    wheel serves every interpreter of the platform."""

    def get_tag(self):
        _, _, platform = super().get_tag()
        return "py3", "none", platform


setup(
    version=cargo_version(),
    rust_extensions=[
        RustExtension(
            {"libleak": "libleak._bin.libleak"},
            path="reporter/Cargo.toml",
            binding=Binding.Exec,
            strip=Strip.Debug,
        ),
        RustExtension(
            "libleak._bin.interposer",
            path="interposer/Cargo.toml",
            binding=Binding.NoBinding,
            strip=Strip.Debug,
        ),
    ],
    cmdclass={"build_rust": build_rust_named, "bdist_wheel": bdist_wheel_any_python},
    # setuptools' staging tree goes under target/ with cargo's, not into the checkout.
    options={"build": {"build_base": os.path.join("target", "py", "setuptools")}},
)
