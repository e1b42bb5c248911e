# Metadata lives in pyproject.toml; this file lets older tooling install the package.
from setuptools import setup

setup()
