"""`refattn info` (refattn.cli.info): JSON and table.
"""

import json

from refattn.cli import main


def test_info(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["numba"]["usable"] is True
    assert "nvcc" in info and "cupy" in info
    assert main(["info"]) == 0
    assert "numba backend" in capsys.readouterr().out
