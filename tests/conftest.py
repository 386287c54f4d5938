import os
import sys

# Tests import the helpers beside them (scene_strategies) and the package from the repo root.
sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
