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
