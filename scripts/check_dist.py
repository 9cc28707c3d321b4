"""Check the release files ``make dist`` built: what PyPI and Airflow will see.

    python scripts/check_dist.py dist

Expects one wheel and one sdist of the package's current version in the folder, and checks:

- the wheel: LICENSE (Apache-2.0) and NOTICE in ``*.dist-info/licenses/``; METADATA with ``License-Expression``,
  a ``License-File`` per file, the Project-URLs, the classifiers, the long description (Markdown, no link
  relative to the repository, which would break on PyPI); ``Requires-Dist`` and ``Provides-Extra`` without any
  test or tool requirement (those are dependency groups, never published) and without Pillow or pandas outside
  their extras; the ``apache_airflow_provider`` entry point; only the package inside.
- the sdist: LICENSE, NOTICE, CHANGELOG.md, SECURITY.md, README.md, pyproject.toml, docs/ and tests/ in it;
  no environments or build output (``.venv*``, ``.cluster``, ``dist``, ``build``, ``__pycache__``).

Prints one line per check; exits 1 (after printing every failure) if any failed. Standard library only.
"""

from __future__ import annotations

import re
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAME = "airflow-provider-kakaopose"
HOME = "https://github.com/airflow-provider-kakaopose/airflow-provider-kakaopose"
PROJECT_URLS = {
    "Homepage": HOME,
    "Documentation": f"{HOME}/tree/main/docs",
    "Source": HOME,
    "Changelog": f"{HOME}/blob/main/CHANGELOG.md",
    "Issue tracker": f"{HOME}/issues",
}
CLASSIFIERS = (
    "Development Status :: 4 - Beta",
    "Framework :: Apache Airflow",
    "Framework :: Apache Airflow :: Provider",
    "Programming Language :: Python :: 3.11",
    "Programming Language :: Python :: 3.12",
    "Programming Language :: Python :: 3.13",
)
EXTRAS = {"redis", "pictures", "pandas", "all"}
#: Requirements of the repository's own tools (dependency groups): none may be published.
TOOLS = {
    "pytest",
    "pytest-asyncio",
    "pytest-timeout",
    "hypothesis",
    "duckdb",
    "ruff",
    "apache-airflow-providers-openlineage",
    "moto",
    "s3fs",
    "apache-airflow-providers-celery",
    "psycopg2-binary",
    "asyncpg",
    "mediapipe",
    "protobuf",
    "scikit-image",
    "build",
    "twine",
    "motmetrics",
    "norfair",
}
#: Optional: only behind their extra's marker.
OPTIONAL = {"pillow": "pictures", "pandas": "pandas", "redis": "redis"}
ENTRY_POINT = "provider_info = airflow_provider_kakaopose.get_provider_info:get_provider_info"
SDIST_MUST = ("LICENSE", "NOTICE", "CHANGELOG.md", "SECURITY.md", "README.md", "pyproject.toml", "PKG-INFO")
SDIST_DIRS = ("airflow_provider_kakaopose/", "docs/", "tests/")
SDIST_NEVER = re.compile(r"(^|/)(\.venv[^/]*|\.cluster[^/]*|dist|build|__pycache__|\.airflow)(/|$)|\.pyc$")

failures: list[str] = []


def check(ok: bool, what: str, detail: str = "") -> None:
    print(f"  {'ok  ' if ok else 'FAIL'} {what}" + (f": {detail}" if detail else ""))
    if not ok:
        failures.append(what + (f": {detail}" if detail else ""))


def version() -> str:
    text = (ROOT / "airflow_provider_kakaopose" / "__init__.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"', text, re.M)
    if not match:
        sys.exit("check_dist: no __version__ in airflow_provider_kakaopose/__init__.py")
    return match[1]


def requirement_name(line: str) -> str:
    return re.split(r"[\s\[<>=!~;(]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")


def check_wheel(path: Path, ver: str) -> None:
    print(f"wheel {path.name}")
    with zipfile.ZipFile(path) as whl:
        names = whl.namelist()
        dist_info = f"airflow_provider_kakaopose-{ver}.dist-info"
        read = lambda name: whl.read(name).decode() if name in names else ""  # noqa: E731
        license_text = read(f"{dist_info}/licenses/LICENSE")
        check(
            "Apache License" in license_text and "Version 2.0, January 2004" in license_text,
            f"{dist_info}/licenses/LICENSE is the Apache License 2.0",
        )
        notice = read(f"{dist_info}/licenses/NOTICE")
        check(NAME in notice and "Kakao" in notice, f"{dist_info}/licenses/NOTICE", f"{len(notice)} bytes")
        outside = sorted({n.split("/")[0] for n in names} - {"airflow_provider_kakaopose", dist_info})
        check(not outside, "only the package and its dist-info in the wheel", ", ".join(outside))
        check(not any(SDIST_NEVER.search(n) for n in names), "no __pycache__ or .pyc in the wheel")
        entry_points = read(f"{dist_info}/entry_points.txt")
        section = re.search(r"^\[apache_airflow_provider\]\n(.*?)(?:\n\[|\Z)", entry_points, re.S | re.M)
        check(
            bool(section) and ENTRY_POINT in section[1],
            "entry point apache_airflow_provider",
            ENTRY_POINT if section else "missing",
        )
        metadata = Parser().parsestr(read(f"{dist_info}/METADATA"))
    check_metadata(metadata, ver)


def check_metadata(meta, ver: str) -> None:
    print("METADATA")
    check(meta["Name"] == NAME and meta["Version"] == ver, "Name and Version", f"{meta['Name']} {meta['Version']}")
    mv = tuple(int(x) for x in (meta["Metadata-Version"] or "0").split("."))
    check(mv >= (2, 4), "Metadata-Version >= 2.4 (PEP 639)", meta["Metadata-Version"])
    check(meta["License-Expression"] == "Apache-2.0", "License-Expression: Apache-2.0", meta["License-Expression"])
    files = meta.get_all("License-File") or []
    check(sorted(files) == ["LICENSE", "NOTICE"], "License-File: LICENSE, NOTICE", ", ".join(files))
    check(meta["Requires-Python"] == ">=3.11", "Requires-Python", meta["Requires-Python"])
    urls = dict(line.split(", ", 1) for line in meta.get_all("Project-URL") or [])
    for label, url in PROJECT_URLS.items():
        check(urls.get(label) == url, f"Project-URL {label}", urls.get(label, "missing"))
    classifiers = meta.get_all("Classifier") or []
    for classifier in CLASSIFIERS:
        check(classifier in classifiers, f"Classifier {classifier}")
    license_classifiers = [c for c in classifiers if c.startswith("License ::")]
    check(not license_classifiers, "no License :: classifier beside License-Expression (PEP 639)")
    extras = set(meta.get_all("Provides-Extra") or [])
    check(extras == EXTRAS, "Provides-Extra", ", ".join(sorted(extras)))
    requires = meta.get_all("Requires-Dist") or []
    names = {requirement_name(r) for r in requires}
    leaked = sorted(names & TOOLS)
    check(not leaked, "Requires-Dist without test or tool requirements", ", ".join(leaked) or f"{len(requires)} lines")
    raw = str(meta)
    for word in ("pytest", "moto", "mediapipe"):
        check(word not in raw.split("\n\n", 1)[0], f'"{word}" nowhere in the METADATA headers')
    for name, extra in OPTIONAL.items():
        lines = [r for r in requires if requirement_name(r) == name]
        check(
            bool(lines) and all(re.search(rf"extra == [\"']({extra}|all)[\"']", r) for r in lines),
            f"{name} only with the [{extra}] extra",
            "; ".join(lines) or "missing",
        )
    check("scipy" in names, "scipy required (tracking, on by default)")
    check(meta["Description-Content-Type"] == "text/markdown", "README as text/markdown")
    body = meta.get_payload() or ""
    relative = re.findall(r"\]\((?!https?://|#)[^)]+\)|^\[[^\]]+\]: (?!https?://)\S+", body, re.M)
    check(not relative, "long description has no repository-relative link", ", ".join(relative[:5]))


def check_sdist(path: Path, ver: str) -> None:
    print(f"sdist {path.name}")
    prefix = f"airflow_provider_kakaopose-{ver}/"
    with tarfile.open(path) as tar:
        names = [m.name for m in tar.getmembers()]
    inside = [n[len(prefix) :] for n in names if n.startswith(prefix)]
    check(len(inside) == len(names), f"every file under {prefix}")
    for name in SDIST_MUST:
        check(name in inside, f"sdist has {name}")
    for folder in SDIST_DIRS:
        count = sum(1 for n in inside if n.startswith(folder))
        check(count > 0, f"sdist has {folder}", f"{count} files")
    unwanted = sorted({m[0] for n in inside if (m := SDIST_NEVER.search(n))})
    check(not unwanted, "sdist holds no .venv*, .cluster, dist, build, __pycache__", ", ".join(unwanted[:5]))
    print(f"  ({len(inside)} files)")


def main(argv: list[str]) -> int:
    folder = Path(argv[1] if len(argv) > 1 else "dist")
    ver = version()
    wheels = sorted(folder.glob("*.whl"))
    sdists = sorted(folder.glob("*.tar.gz"))
    print(f"check_dist: {folder}/ for {NAME} {ver}")
    check(
        [p.name for p in wheels] == [f"airflow_provider_kakaopose-{ver}-py3-none-any.whl"],
        "one wheel of this version",
        ", ".join(p.name for p in wheels) or "none",
    )
    check(
        [p.name for p in sdists] == [f"airflow_provider_kakaopose-{ver}.tar.gz"],
        "one sdist of this version",
        ", ".join(p.name for p in sdists) or "none",
    )
    if wheels:
        check_wheel(wheels[0], ver)
    if sdists:
        check_sdist(sdists[0], ver)
    if failures:
        print(f"check_dist: {len(failures)} check(s) FAILED:", file=sys.stderr)
        for failure in failures:
            print(f"  - {failure}", file=sys.stderr)
        return 1
    print("check_dist: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
