from snipnb import provenance


def test_source_hash_follows_the_code_and_nothing_else(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "a.py").write_text("x = 1\n")
    first = provenance.source_hash(package)
    (package / "README.md").write_text("docs change, code does not")
    assert provenance.source_hash(package) == first
    (package / "a.py").write_text("x = 2\n")
    assert provenance.source_hash(package) != first
    (package / "a.py").write_text("x = 1\n")
    (package / "b.py").write_text("")  # a new module is new code
    assert provenance.source_hash(package) != first


def test_code_version_names_the_code_the_versions_and_the_commit():
    version = provenance.code_version()
    assert version["code"] == provenance.source_hash()
    assert version["torch"] and version["snipnb"]
    commit, dirty = provenance.git_state()
    assert version["commit"] == commit and version["dirty"] == dirty
    if commit is not None:  # in a checkout: a full sha
        assert len(commit) == 40 and commit[:10] in provenance.describe("cpu")
    assert "cpu" in provenance.describe("cpu")


def test_only_changes_to_what_makes_results_count_as_uncommitted(tmp_path):
    # Executing a chapter writes it into book/; the runs after it were made by committed code.
    import subprocess

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    for name in ("snipnb/a.py", "book/chapter.ipynb", "README.md"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("one\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "start")
    package = tmp_path / "snipnb"
    assert provenance.changed(package) is False
    (tmp_path / "book/chapter.ipynb").write_text("executed\n")
    (tmp_path / "README.md").write_text("edited\n")
    assert provenance.changed(package) is False
    (tmp_path / "snipnb/a.py").write_text("two\n")
    assert provenance.changed(package) is True
    assert provenance.changed(tmp_path.parent / "nowhere") is None
