"""`--check` as a user runs it: JSON on stdout, errors as FILE:LINE."""


def test_check_prints_topology(cms):
    cms.write_cfg(
        'md = MailDir("~/mail/INBOX")\n'
        'acct = Office365_Account(user="user@example.com")\n'
        'box = Office365("inbox", acct)\n'
        'box.delete_action = "delete"\n'
        'CredentialServer("~/cms.sock", [acct], protocols=["SMTP", "IMAP"])\n'
    )
    out = cms.check()
    home = str(cms.home)
    assert out["maildirs"] == [{"path": home + "/mail/INBOX"}]
    assert out["cloud_mailboxes"][0]["delete_action"] == "delete"
    assert out["credential_servers"][0]["umask"] == 0o600
    assert out["credential_servers"][0]["accounts"] == ["user@example.com"]
    # --check touches nothing.
    assert not (cms.home / "mail").exists()


def test_broken_config_names_file_and_line(cms):
    cfg = cms.write_cfg('MailDir("~/mail")\n\nGMail("INBOX", GMail_Account(usr="x@gmail.com"))\n')
    proc = cms.run("--check", check=False)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith(f"{cfg}:3: TypeError")
    assert "usr" in proc.stderr
