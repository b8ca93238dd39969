"""Drives sparekey-admind with the unmodified duo_client package.

argv[1] is a JSON object: host, port, ca_certs, sig_version, mode ("scenario" or
"refusals") and the integration keys. Assertions fail the process; on success it prints
one JSON object on stdout for the Rust test to check further.
"""
import email.utils
import json
import sys
import time

import duo_client
import duo_client.client

cfg = json.loads(sys.argv[1])
# duo_client turns a bool into "true" for signature v5 only; v2 needs the string.
PRESERVE = True if cfg["sig_version"] == 5 else "true"


def admin(ikey, skey):
    return duo_client.Admin(
        ikey=ikey,
        skey=skey,
        host=cfg["host"],
        port=cfg["port"],
        ca_certs=cfg["ca_certs"],
        sig_version=cfg["sig_version"],
    )


def refused(status, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except RuntimeError as e:
        assert e.status == status, (e.status, str(e))
        return e.data if isinstance(e.data, dict) else json.loads(e.data)
    raise AssertionError("expected HTTP %d from %s" % (status, fn.__name__))


def scenario():
    a = admin(cfg["ikey"], cfg["skey"])
    name = cfg["username"]
    user = a.add_user(username=name, realname="Ann Lee", email="ann@example.com",
                      notes="laptop stolen", alias1=name + "-alt")
    uid = user["user_id"]
    assert user["username"] == name and user["status"] == "active", user
    assert user["aliases"] == {"alias1": name + "-alt"}, user
    assert a.get_user_by_id(uid)["realname"] == "Ann Lee"
    assert [u["user_id"] for u in a.get_users_by_name(name)] == [uid]
    assert uid in [u["user_id"] for u in a.get_users()]
    a.update_user(uid, realname="Ann B. Lee")
    assert a.get_user_by_id(uid)["realname"] == "Ann B. Lee"
    refused(400, a.add_user, username=name)

    phone = a.add_phone(number="+15555550100", name="work phone", type="Mobile")
    a.add_user_phone(uid, phone["phone_id"])
    assert [p["phone_id"] for p in a.get_user_phones(uid)] == [phone["phone_id"]]
    assert a.get_user_by_id(uid)["is_enrolled"] is True
    spare = a.add_phone(name="spare")
    a.add_user_phone(uid, spare["phone_id"])
    a.delete_user_phone(uid, spare["phone_id"])
    assert len(a.get_user_phones(uid)) == 1

    # Defaults: ten 9-digit codes, replacing; then each parameter.
    ten = a.add_user_bypass_codes(uid)
    assert len(ten) == 10 and all(c.isdigit() and len(c) == 9 for c in ten), ten
    two = a.add_user_bypass_codes(uid, count=2, valid_secs=3600, remaining_uses=3)
    assert len(two) == 2
    listed = a.get_user_bypass_codes(uid)
    assert len(listed) == 2, "generating replaced the ten"
    assert all(c["reuse_count"] == 3 and c["expiration"] is not None for c in listed), listed
    custom = a.add_user_bypass_codes(uid, codes=["123456789", "987654321"],
                                     preserve_existing=PRESERVE)
    assert custom == ["123456789", "987654321"], custom
    assert len(a.get_user_bypass_codes(uid)) == 4
    # A duplicate fails the whole call.
    refused(400, a.add_user_bypass_codes, uid, codes=["555555555", "123456789"],
            preserve_existing=PRESERVE)
    assert len(a.get_user_bypass_codes(uid)) == 4
    forever = a.add_user_bypass_codes(uid, count=1, valid_secs=0, remaining_uses=0,
                                      preserve_existing=PRESERVE)
    refused(400, a.add_user_bypass_codes, uid, count=11)

    everything = a.get_bypass_codes()
    mine = [c for c in everything if c["user"]["user_id"] == uid]
    assert len(mine) == 5, everything
    never = [c for c in mine if c["expiration"] is None]
    assert len(never) == 3 and any(c["reuse_count"] == 0 for c in never), mine
    text = json.dumps(everything) + json.dumps(a.get_user_bypass_codes(uid))
    for c in ten + two + custom + forever:
        assert c not in text, "a listing shows a code value"

    # One code by id, then delete it.
    victim = [c for c in mine if c["reuse_count"] == 0][0]["bypass_code_id"]
    got = a.json_api_call("GET", "/admin/v1/bypass_codes/" + victim, {})
    assert got["bypass_code_id"] == victim and got["admin_email"] == cfg["key_name"], got
    a.delete_bypass_code_by_id(victim)
    refused(404, a.json_api_call, "GET", "/admin/v1/bypass_codes/" + victim, {})
    assert len(a.get_user_bypass_codes(uid)) == 4

    # Another user, deleted.
    other = a.add_user(username=name + "-tmp")
    a.delete_user(other["user_id"])
    assert a.get_user_by_id(other["user_id"])["status"] == "pending deletion"
    refused(404, a.get_user_by_id, "UNOSUCHUSER00000000")

    print(json.dumps({"user_id": uid, "code": two[0], "custom": custom[1]}))


def refusals():
    uid = cfg["user_id"]
    owner = admin(cfg["ikey"], cfg["skey"])
    assert owner.get_users() is not None

    body = refused(401, admin(cfg["ikey"], "x" * 40).get_users)
    assert body["stat"] == "FAIL" and body["code"] == 40103, body
    refused(401, admin("DINOSUCHKEY000000000", cfg["skey"]).get_users)
    refused(401, admin(cfg["revoked_ikey"], cfg["revoked_skey"]).get_users)

    # A date from an hour ago, correctly signed.
    real = email.utils.formatdate
    duo_client.client.email.utils.formatdate = lambda *a, **k: real(time.time() - 3600)
    try:
        body = refused(401, owner.get_users)
        assert body["code"] == 40105, body
    finally:
        duo_client.client.email.utils.formatdate = real

    # The body changed after signing.
    send = duo_client.client.Client._make_request

    def tampered(self, method, uri, body, headers):
        if body:
            body = body.replace("1", "7")
        return send(self, method, uri, body, headers)

    duo_client.client.Client._make_request = tampered
    try:
        refused(401, owner.add_user_bypass_codes, uid, count=1)
    finally:
        duo_client.client.Client._make_request = send

    desk = admin(cfg["desk_ikey"], cfg["desk_skey"])
    assert desk.get_user_by_id(uid)["user_id"] == uid, "help desk reads users"
    body = refused(403, desk.add_user_bypass_codes, uid)
    assert body["code"] == 40301, body
    refused(403, desk.add_user, username="nobody")
    refused(403, desk.delete_user, uid)

    plain = admin(cfg["plain_ikey"], cfg["plain_skey"])
    refused(403, plain.add_user_bypass_codes, uid, count=1)
    refused(403, plain.add_user_bypass_codes, uid, codes=["111222333"])
    codes = plain.add_user_bypass_codes(uid, preserve_existing=PRESERVE)
    assert len(codes) == 10
    print(json.dumps({"ok": True}))


{"scenario": scenario, "refusals": refusals}[cfg["mode"]]()
