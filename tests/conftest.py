"""Test configuration: CI (CI=true) runs the property-based tests on a fixed set of examples, so a
submission's verdict does not depend on the draw; local runs keep drawing new random instances."""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")
