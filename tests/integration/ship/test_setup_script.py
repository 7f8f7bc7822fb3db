"""`scripts/setup.sh` and `make setup` as a new user meets them (issue 15).

Covers: the system packages (git among them, for the GitOps tests) are asked for once each
(prometheus and promtool are one package) and apt-get waits for the dpkg lock
(`DPkg::Lock::Timeout=120`) instead of failing at once; the commands run are recorded by an
`apt-get` on the PATH that stands in for the real one (the test cannot be root nor take the dpkg
lock); `make setup` ends by printing how to put `.venv/bin` and `.tools/bin` on the PATH, and the
README shows the same line.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
SETUP = ROOT / "scripts" / "setup.sh"
RECORDER = '#!/bin/sh\necho "$*" >> "{log}"\n'
ROOT_ID = "#!/bin/sh\necho 0\n"


def test_packages_are_asked_for_once_and_apt_waits_for_the_dpkg_lock(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "apt.log"
    for name, text in (("apt-get", RECORDER.format(log=log)), ("id", ROOT_ID)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    dirname, bash = shutil.which("dirname"), shutil.which("bash")
    assert dirname is not None and bash is not None
    (bin_dir / "dirname").symlink_to(dirname)  # the script's `cd` to the repository root uses it
    # PATH holds only the stand-ins (and dirname): redis-server, prometheus, promtool, shellcheck, git look missing
    result = subprocess.run(
        [bash, "-c", f'source "{SETUP}" && install_system_packages'],
        env={"PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    assert calls == [
        "-o DPkg::Lock::Timeout=120 update -qq",
        "-o DPkg::Lock::Timeout=120 install -y -qq --no-install-recommends redis-server prometheus shellcheck git",
    ]
    assert "installing redis-server prometheus shellcheck git" in result.stderr


def test_make_setup_prints_how_to_put_the_tools_on_path() -> None:
    result = subprocess.run(["make", "setup"], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    line = f'export PATH="{ROOT}/.venv/bin:{ROOT}/.tools/bin:$PATH"'
    assert line in result.stderr.splitlines()[-1], result.stderr
    assert 'export PATH="$PWD/.venv/bin:$PWD/.tools/bin:$PATH"' in (ROOT / "README.md").read_text()
