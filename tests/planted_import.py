"""A sitecustomize for tests/test_gpu_check.py's plants (copied onto a child's PYTHONPATH): when module
$PLANT_TARGET is imported, after its own code, `import rich` ($PLANT_ACTION=import) or write the pid to
$PLANT_PID and sleep ($PLANT_ACTION=hang). Not imported by the suite itself."""
import importlib.machinery
import os
import sys
import time

TARGET, ACTION = os.environ.get("PLANT_TARGET"), os.environ.get("PLANT_ACTION")


class _Plant:
    def find_spec(self, name, path=None, target=None):
        if name != TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None:
            return None
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            if ACTION == "hang":
                with open(os.environ["PLANT_PID"], "w") as f:
                    f.write(str(os.getpid()))
                time.sleep(600)
            else:
                import rich  # noqa: F401 - the planted import
        spec.loader.exec_module = exec_module
        return spec


if TARGET:
    sys.meta_path.insert(0, _Plant())
