"""The email destination: rendering (escaping, PII modes, subjects, test and do-not-contact
leads), the outbox, and sending through the real ACS SDK to the fake ACS service over TLS."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from email import policy
from email.parser import BytesParser
from pathlib import Path

import pytest

from leads.core.normalise import from_http_body
from leads.core.settings import Settings
from leads.delivery.alerts import alert_text
from leads.destinations.base import PermanentError, Route, TransientError
from leads.destinations.email import (
    EmailDestination,
    operation_id,
    render_digest,
    render_lead,
    send_operator_mail,
)
from leads.destinations.notice import one_line, within
from tests import fake_acs as fake_acs_plugin
from tests.fake_acs import DEFAULT_SENDER, FakeAcs
from tests.personal import leaked

# The fake's fixtures (conftest.py may import them for every test module instead).
fake_acs, fake_tls_ca = fake_acs_plugin.fake_acs, fake_acs_plugin.fake_tls_ca

FIXTURES = Path(__file__).parent / "fixtures" / "marketplace"
SALES = ("sales@contoso.com",)
RECEIVED = datetime(2024, 5, 6, 14, 3, tzinfo=UTC)

# The personal data of the lead below, none of which may appear when EMAIL_PII=none.
PERSONAL = ("Jane", "Doe", "jane.doe", "fabrikam", "Fabrikam", "7946", "0958", "Procurement", "40 seats")


def body(**changes) -> dict:
    """A realistic AppSource "Contact me" lead as the marketplace POSTs it."""
    user = {
        "FirstName": "Jane",
        "LastName": "Doe",
        "Email": "jane.doe@fabrikam.com",
        "Phone": "+44 20 7946 0958",
        "Country": "United Kingdom",
        "Company": "Fabrikam Ltd",
        "Title": "Head of Procurement",
    }
    user.update(changes.pop("user", {}))
    lead = {
        "UserDetails": user,
        "LeadSource": "SPZA-PLT|contoso.contoso-crm",
        "OfferTitle": "Contoso CRM",
        "Description": "Please call me about 40 seats for our sales team.",
    }
    lead.update(changes)
    return lead


def lead_from(data: dict):
    return from_http_body(data, received_at=RECEIVED)


def fixture_lead(name: str):
    return lead_from(json.loads((FIXTURES / name).read_text()))


def settings(**values) -> Settings:
    base = {
        "EMAIL_CONNECTION_STRING": "",
        "EMAIL_ENDPOINT": "",
        "EMAIL_SENDER": "",
        "EMAIL_PII": "full",
        "LEADS_PORTAL_URL": "",
        "EMAIL_PER_MINUTE": "30",
        "LEADS_ALERT_TO": "",
    }
    base.update(values)
    return Settings(**base)


def acs_settings(fake: FakeAcs, **values) -> Settings:
    return settings(**{"EMAIL_CONNECTION_STRING": fake.connection_string, "EMAIL_SENDER": DEFAULT_SENDER, **values})


def acs_destination(fake: FakeAcs, **values) -> EmailDestination:
    return EmailDestination(acs_settings(fake, **values), poll_interval=0.05, poll_timeout=2.0, read_timeout=1.0)


def all_of(mail) -> str:
    return "\n".join((mail.subject, mail.text, mail.html))


# --- the destination's shape ----------------------------------------------------------------------


def test_enabled_when_someone_is_to_be_mailed_and_rate_limited_by_setting():
    configured = settings(EMAIL_PER_MINUTE="5")
    destination = EmailDestination.from_settings(configured)
    assert isinstance(destination, EmailDestination)
    assert not EmailDestination.is_enabled(settings())  # no one to mail: no delivery owed
    assert EmailDestination.is_enabled(settings(EMAIL_TO="sales@contoso.com"))  # ACS or not: outbox
    assert EmailDestination.is_enabled(settings(LEADS_ROUTING='[{"offer": "x*", "email": "x@contoso.com"}]'))
    assert destination.rate_limit == 5 and destination.rate_period == 60
    assert destination.can_digest


# --- subjects ------------------------------------------------------------------------------------


def test_subject_names_company_offer_and_action_in_words():
    mail = render_lead(lead_from(body()), Route(SALES), settings())
    assert mail.subject == "New lead: Fabrikam Ltd — Contoso CRM (Contact me)"


def test_subject_of_a_test_lead_starts_with_test_mark():
    lead = fixture_lead("https-validation-test-lead.json")
    mail = render_lead(lead, Route(SALES, test=True), settings())
    assert mail.subject == "[TEST] New lead: MSFT_TEST_636573304831318844 — Contoso Test (Install)"


def test_subject_of_a_do_not_contact_lead_says_so():
    lead = lead_from(body(LeadSource="SPZA-DNC|contoso.contoso-crm"))
    mail = render_lead(lead, Route(SALES), settings())
    assert mail.subject == "Do not contact: Fabrikam Ltd — Contoso CRM"


def test_subject_without_company_uses_the_name_or_initials_or_nothing():
    lead = lead_from(body(user={"Company": ""}))
    assert render_lead(lead, Route(SALES), settings()).subject == "New lead: Jane Doe — Contoso CRM (Contact me)"
    assert (
        render_lead(lead, Route(SALES), settings(EMAIL_PII="masked")).subject
        == "New lead: J. D. — Contoso CRM (Contact me)"
    )
    assert render_lead(lead, Route(SALES), settings(EMAIL_PII="none")).subject == "New lead: Contoso CRM (Contact me)"


def test_subject_cannot_carry_header_injection(tmp_path):
    lead = lead_from(body()).model_copy(update={"company": "Evil\r\nBcc: victim@example.com\r\n\r\n<b>x"})
    mail = render_lead(lead, Route(SALES), settings())
    assert "\r" not in mail.subject and "\n" not in mail.subject
    assert one_line("a\r\nb\x00c\u2028d", 200) == "a b c d"
    assert (
        one_line("one two three", 9) == within("one two three", 9) == "one two…"
    )  # cut, with no space left before the …
    destination = EmailDestination(settings(EMAIL_OUTBOX_DIR=str(tmp_path)))
    destination.send(lead, Route(SALES))
    message = BytesParser(policy=policy.default).parsebytes((tmp_path / f"{lead.lead_id}.eml").read_bytes())
    assert message["Bcc"] is None
    assert message["Subject"] == "New lead: Evil Bcc: victim@example.com <b>x — Contoso CRM (Contact me)"


# --- escaping ------------------------------------------------------------------------------------


def test_every_lead_value_is_escaped_in_html():
    lead = lead_from(
        body(
            user={
                "FirstName": "<b>Bob</b>",
                "Company": "<script>alert(1)</script>",
                "Title": '"><img src=x onerror=alert(1)>',
            },
            Description='"><img src=x onerror=alert(2)> <script>steal()</script>',
        )
    )
    mail = render_lead(lead, Route(SALES), settings())
    assert "<script" not in mail.html and "<img" not in mail.html and "<b>Bob" not in mail.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in mail.html
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in mail.html
    assert "&lt;b&gt;Bob&lt;/b&gt;" in mail.html
    # The plain text shows the values as they are: text is not markup.
    assert "<script>alert(1)</script>" in mail.text
    assert "<script>alert(1)</script>" in mail.subject


def test_escaping_holds_in_a_digest_and_for_campaign_values():
    leads = [
        lead_from(body(user={"Company": "<script>x()</script>"}, Description='{"mktcmpid": "\\"><img src=x>"}')),
        lead_from(body(user={"Email": "second@fabrikam.com"})),
    ]
    mail = render_digest(leads, Route(SALES), settings())
    assert "<script" not in mail.html and "<img" not in mail.html
    assert "mktcmpid: &#34;&gt;&lt;img src=x&gt;" in mail.html


# --- personal data --------------------------------------------------------------------------------


def test_full_mode_shows_everything_sales_needs():
    lead = lead_from(body(Description='{"mktcmpid": "spring-sale", "partnerid": "12345"}'))
    mail = render_lead(lead, Route(SALES), settings())
    for value in (
        "Jane Doe",
        "Fabrikam Ltd",
        "Head of Procurement",
        "jane.doe@fabrikam.com",
        "+44 20 7946 0958",
        "United Kingdom (GB)",
        "Contoso CRM (contoso.contoso-crm)",
        "AppSource",
        "Contact me",
        "mktcmpid: spring-sale",
        "partnerid: 12345",
        lead.lead_id,
        "2024-05-06 14:03 UTC",
    ):
        assert value in mail.text and value in mail.html, value
    assert 'href="mailto:jane.doe@fabrikam.com"' in mail.html and 'href="tel:+442079460958"' in mail.html
    assert "call or email them back within one business day" in mail.text


def test_full_mode_shows_the_description():
    mail = render_lead(lead_from(body()), Route(SALES), settings())
    assert "Please call me about 40 seats" in mail.text and "Please call me about 40 seats" in mail.html


def test_masked_mode_masks_exactly():
    lead = lead_from(body())
    mail = render_lead(lead, Route(SALES), settings(EMAIL_PII="masked"))
    for text in (mail.text, mail.html):
        assert "j***@fabrikam.com" in text
        assert "+44 *** *** 0958" in text
        assert "J. D." in text
        assert leaked(("jane.doe", "Jane", "7946"), text) == []
        assert "40 seats" not in text  # free text cannot be masked: left out
        assert f"python -m leads show {lead.lead_id}" in text
    assert "Fabrikam Ltd" in mail.text  # the company stays: sales needs the business context


def test_masked_phone_of_the_documented_example():
    lead = fixture_lead("https-documented-example.json")
    mail = render_lead(lead, Route(SALES), settings(EMAIL_PII="masked"))
    assert "+1 *** *** 5555" in mail.text and "s***@contoso.com" in mail.text and "S. O." in mail.text


def test_none_mode_has_no_personal_data_and_says_where_the_lead_is():
    lead = lead_from(body())
    mail = render_lead(lead, Route(SALES), settings(EMAIL_PII="none"))
    assert leaked(PERSONAL, all_of(mail)) == []
    assert f"python -m leads show {lead.lead_id}" in mail.text
    assert "Contoso CRM" in mail.subject and "Contact me" in mail.text and "United Kingdom" in mail.text


def test_none_mode_links_the_portal_when_set():
    lead = lead_from(body())
    mail = render_lead(
        lead, Route(SALES), settings(EMAIL_PII="none", LEADS_PORTAL_URL="https://crm.contoso.com/leads/{leadId}")
    )
    url = f"https://crm.contoso.com/leads/{lead.lead_id}"
    assert url in mail.text and f'href="{url}"' in mail.html
    assert "python -m leads show" not in mail.text


def test_none_mode_digest_has_no_personal_data():
    leads = [lead_from(body()), lead_from(body(user={"Email": "jane.doe2@fabrikam.com"}))]
    mail = render_digest(leads, Route(SALES), settings(EMAIL_PII="none"))
    assert leaked(PERSONAL, all_of(mail)) == []


# --- test and do-not-contact leads ----------------------------------------------------------------


def test_test_lead_body_says_it_is_a_test():
    lead = fixture_lead("https-validation-test-lead.json")
    mail = render_lead(lead, Route(SALES, test=True), settings())
    for text in (mail.text, mail.html):
        assert "[TEST] This is a test lead, not a customer." in text
        assert "Nothing to do" in text


def test_do_not_contact_lead_says_plainly_not_to_contact():
    lead = lead_from(body(LeadSource="SPZA-DNC|contoso.contoso-crm"))
    mail = render_lead(lead, Route(SALES), settings())
    for text in (mail.text, mail.html):
        assert "DO NOT CONTACT this customer" in text
        assert "Do NOT contact this customer. Record the lead only" in text
        assert "within one business day" not in text


def test_next_step_follows_the_action():
    install = lead_from(body(LeadSource="AzureMarketplace", ActionCode="INS"))
    drive = lead_from(body(LeadSource="TestDrive-StartTestDrive|contoso.contoso-vm"))
    assert "welcome them" in render_lead(install, Route(SALES), settings()).text
    assert "follow up on how it went" in render_lead(drive, Route(SALES), settings()).text


# --- the outbox (no ACS configured) ----------------------------------------------------------------


def test_outbox_writes_a_parseable_eml_once_per_lead(tmp_path):
    outbox = tmp_path / "outbox"
    lead = lead_from(body())
    destination = EmailDestination(settings(EMAIL_OUTBOX_DIR=str(outbox)))
    sent = destination.send(lead, Route(SALES))
    again = destination.send(lead, Route(SALES))
    files = list(outbox.iterdir())
    assert [f.name for f in files] == [f"{lead.lead_id}.eml"]
    assert sent.external_id == again.external_id == f"outbox:{lead.lead_id}.eml"
    message = BytesParser(policy=policy.default).parsebytes(files[0].read_bytes())
    assert message["To"] == "sales@contoso.com"
    assert message["Subject"] == "New lead: Fabrikam Ltd — Contoso CRM (Contact me)"
    assert message["From"] and message["Date"] and message["Message-ID"]
    assert message.get_content_type() == "multipart/alternative"
    assert message.get_body(("plain",)).get_content().startswith("New lead: Fabrikam Ltd")
    assert "<table" in message.get_body(("html",)).get_content()


def test_outbox_digest_and_operator_mail(tmp_path):
    configured = settings(EMAIL_OUTBOX_DIR=str(tmp_path))
    leads = [lead_from(body()), lead_from(body(user={"Email": "other@fabrikam.com"}))]
    sent = EmailDestination(configured).send_digest(leads, Route(SALES))
    send_operator_mail(configured, ("ops@contoso.com",), "Alert", "Something failed.")
    names = sorted(path.name for path in tmp_path.iterdir())
    assert sent.external_id == f"outbox:{names[0]}" and names[0].startswith("digest-")
    assert names[1].startswith("operator-")


# --- ACS, through the fake service --------------------------------------------------------------


def test_acs_send_signed_and_accepted(fake_acs):
    lead = lead_from(body())
    sent = acs_destination(fake_acs).send(lead, Route(SALES))
    assert len(fake_acs.mails) == 1
    mail = fake_acs.mails[0]
    assert mail["to"] == ["sales@contoso.com"] and mail["sender"] == DEFAULT_SENDER
    assert mail["subject"] == "New lead: Fabrikam Ltd — Contoso CRM (Contact me)"
    assert "&lt;" not in mail["subject"] and "jane.doe@fabrikam.com" in mail["text"] and "<table" in mail["html"]
    assert sent.external_id == mail["operation_id"] == operation_id([lead.lead_id], SALES, DEFAULT_SENDER)
    assert sent.detail["status"] == "Succeeded"
    assert {r.status for r in fake_acs.requests} == {200, 202}


def test_wrong_access_key_is_permanent_with_a_fix(fake_acs):
    configured = settings(
        EMAIL_CONNECTION_STRING=fake_acs.connection_string_with_wrong_key(), EMAIL_SENDER=DEFAULT_SENDER
    )
    with pytest.raises(PermanentError) as caught:
        EmailDestination(configured, read_timeout=2).send(lead_from(body()), Route(SALES))
    assert "401" in str(caught.value) and "Denied" in str(caught.value)
    assert "EMAIL_CONNECTION_STRING" in caught.value.fix
    assert fake_acs.mails == [] and [r.status for r in fake_acs.requests] == [401]


def test_429_is_transient_with_the_services_retry_after(fake_acs):
    destination = acs_destination(fake_acs)
    fake_acs.fail_next("429", retry_after="37")
    with pytest.raises(TransientError) as caught:
        destination.send(lead_from(body()), Route(SALES))
    assert caught.value.retry_after == 37
    assert destination.classify(caught.value) is caught.value
    assert fake_acs.mails == [] and len(fake_acs.requests) == 1  # the SDK did not retry by itself
    destination.send(lead_from(body()), Route(SALES))
    assert len(fake_acs.mails) == 1


@pytest.mark.parametrize("kind", ["500", "503"])
def test_server_errors_are_transient(fake_acs, kind):
    fake_acs.fail_next(kind)
    with pytest.raises(TransientError) as caught:
        acs_destination(fake_acs).send(lead_from(body()), Route(SALES))
    assert kind in str(caught.value)
    assert fake_acs.mails == []


@pytest.mark.parametrize("kind", ["delay", "drop_after"])
def test_lost_answer_is_transient_and_the_retry_sends_no_second_mail(fake_acs, kind):
    destination = acs_destination(fake_acs)
    lead = lead_from(body())
    fake_acs.fail_next(kind, on="send", delay=2.0)
    with pytest.raises(TransientError):
        destination.send(lead, Route(SALES))
    assert len(fake_acs.mails) == 1  # ACS took the mail; its answer was lost
    sent = destination.send(lead, Route(SALES))
    assert len(fake_acs.mails) == 1 and fake_acs.repeats == 1
    assert sent.external_id == fake_acs.mails[0]["operation_id"]


def test_dropped_connection_is_transient(fake_acs):
    fake_acs.fail_next("drop", on="send")
    with pytest.raises(TransientError) as caught:
        acs_destination(fake_acs).send(lead_from(body()), Route(SALES))
    assert "could not reach" in str(caught.value)
    assert fake_acs.mails == []


def test_same_lead_sent_twice_is_one_mail(fake_acs):
    destination = acs_destination(fake_acs)
    lead = lead_from(body())
    first = destination.send(lead, Route(SALES))
    second = EmailDestination(acs_settings(fake_acs), poll_interval=0.05).send(lead, Route(SALES))
    assert first.external_id == second.external_id
    assert len(fake_acs.mails) == 1 and fake_acs.repeats == 1


def test_repeat_of_a_running_operation_answered_409_counts_as_sent(fake_acs):
    fake_acs.on_repeat, fake_acs.polls_until_done = "conflict", 1000
    destination = EmailDestination(acs_settings(fake_acs), poll_interval=0.05, poll_timeout=0.1)
    lead = lead_from(body())
    destination.send(lead, Route(SALES))
    sent = destination.send(lead, Route(SALES))
    assert sent.external_id == fake_acs.mails[0]["operation_id"] and len(fake_acs.mails) == 1
    assert 409 in [r.status for r in fake_acs.requests]


def test_new_recipients_make_a_new_mail(fake_acs):
    destination = acs_destination(fake_acs)
    lead = lead_from(body())
    destination.send(lead, Route(SALES))
    destination.send(lead, Route(("other-team@contoso.com",)))
    assert len(fake_acs.mails) == 2


def test_status_polling_is_short_and_bounded(fake_acs):
    fake_acs.polls_until_done, fake_acs.retry_after = 1000, "20"  # ACS advises 20 s between polls
    destination = EmailDestination(acs_settings(fake_acs), poll_interval=0.1, poll_timeout=0.6)
    sent = destination.send(lead_from(body()), Route(SALES))
    assert sent.detail["status"] == "Running" and len(fake_acs.mails) == 1
    # Not ACS's 20 s: polls at our own interval (at least half of it apart), until 0.6 s had passed.
    assert 2 <= sum(r.method == "GET" for r in fake_acs.requests) <= 0.6 / (0.1 / 2) + 1


def test_failed_operation_is_permanent_with_acs_message(fake_acs):
    fake_acs.fail_next_operation("EmailDropped", "Email was dropped after several attempts to deliver.")
    with pytest.raises(PermanentError) as caught:
        acs_destination(fake_acs).send(lead_from(body()), Route(SALES))
    assert "Failed (EmailDropped): Email was dropped" in str(caught.value)
    assert "jane" not in caught.value.explain().lower()


def test_sender_domain_not_linked_names_email_sender(fake_acs):
    destination = EmailDestination(acs_settings(fake_acs, EMAIL_SENDER="noreply@unlinked.example.com"), read_timeout=2)
    with pytest.raises(PermanentError) as caught:
        destination.send(lead_from(body()), Route(SALES))
    assert "400 DomainNotLinked" in str(caught.value)
    assert "EMAIL_SENDER" in caught.value.fix


def test_missing_sender_with_acs_is_permanent(fake_acs):
    destination = EmailDestination(settings(EMAIL_CONNECTION_STRING=fake_acs.connection_string))
    with pytest.raises(PermanentError) as caught:
        destination.send(lead_from(body()), Route(SALES))
    assert "EMAIL_SENDER" in caught.value.explain() and fake_acs.requests == []


def test_errors_never_carry_personal_data(fake_acs):
    lead = lead_from(body())
    destination = acs_destination(fake_acs)
    for kind in ("429", "500", "drop"):
        fake_acs.fail_next(kind)
        with pytest.raises(TransientError) as caught:
            destination.send(lead, Route(SALES))
        assert leaked(PERSONAL, caught.value.explain()) == []


def test_managed_identity_token_and_missing_role(fake_acs, monkeypatch):
    from azure.core.credentials import AccessToken

    import leads.destinations.email as email_module

    class StaticCredential:
        def __init__(self, token: str) -> None:
            self.token = token

        def get_token(self, *scopes, **kwargs):
            assert scopes == ("https://communication.azure.com//.default",)
            return AccessToken(self.token, int(time.time()) + 3600)

    fake_acs.tokens = {"with-role": True, "without-role": False}
    for token, ok in (("with-role", True), ("without-role", False)):
        monkeypatch.setattr(email_module, "_identity_credential", lambda token=token: StaticCredential(token))
        email_module._acs_client.cache_clear()
        destination = EmailDestination(
            settings(EMAIL_ENDPOINT=fake_acs.endpoint, EMAIL_SENDER=DEFAULT_SENDER), poll_interval=0.05, read_timeout=2
        )
        lead = lead_from(body(user={"Email": f"{token}@fabrikam.com"}))
        if ok:
            assert destination.send(lead, Route(SALES)).detail["status"] == "Succeeded"
        else:
            with pytest.raises(PermanentError) as caught:
                destination.send(lead, Route(SALES))
            assert "403" in str(caught.value) and "Communication and Email Service Owner" in caught.value.fix
    email_module._acs_client.cache_clear()
    assert len(fake_acs.mails) == 1


# --- digests -----------------------------------------------------------------------------------------


def test_digest_is_one_mail_listing_every_lead(fake_acs):
    leads = [
        lead_from(body()),
        lead_from(
            body(
                user={"Company": "Northwind"}, LeadSource="AzureMarketplace", ActionCode="INS", OfferTitle="Contoso VM"
            )
        ),
        lead_from(body(user={"Company": "Adatum"}, LeadSource="SPZA-DNC|contoso.contoso-crm")),
    ]
    destination = acs_destination(fake_acs)
    sent = destination.send_digest(leads, Route(SALES))
    again = destination.send_digest(list(reversed(leads)), Route(SALES))
    assert sent.external_id == again.external_id and len(fake_acs.mails) == 1
    mail = fake_acs.mails[0]
    assert mail["subject"] == "3 new leads (1 do not contact): Contoso CRM, Contoso VM"
    for lead in leads:
        assert lead.lead_id in mail["text"] and lead.lead_id in mail["html"]
    for company in ("Fabrikam Ltd", "Northwind", "Adatum"):
        assert company in mail["text"]
    assert "Do not contact: Adatum — Contoso CRM" in mail["text"] and "DO NOT CONTACT" in mail["html"]


def test_digest_of_test_leads_is_marked():
    lead = fixture_lead("https-validation-test-lead.json")
    other = lead.model_copy(update={"lead_id": "h-other"})
    mail = render_digest([lead, other], Route(SALES, test=True), settings())
    assert mail.subject == "[TEST] 2 new leads: Contoso Test"


# --- operator alerts (grouped per destination and window: tests/test_alerts.py) ------------------


def failure_group(**changes) -> dict:
    group = {
        "destination": "webhook",
        "start": RECEIVED.isoformat(),
        "count": 3,
        "leads": ["hc519cf8782dab51f24fabc10", "h2", "h3"],
        "errors": [
            {
                "error": "the service answered 410 Gone",
                "count": 3,
                "fix": "the receiver removed the endpoint: set WEBHOOK_URL",
            }
        ],
    }
    group.update(changes)
    return group


def test_failure_alert_names_destination_count_leads_fix_and_replay(fake_acs):
    from leads.delivery.alerts import _send

    configured = acs_settings(fake_acs, LEADS_ALERT_TO="ops@contoso.com; oncall@contoso.com")
    assert _send(failure_group(), "webhook|x", ("ops@contoso.com", "oncall@contoso.com"), configured) is None  # sent
    mail = fake_acs.mails[0]
    assert mail["to"] == ["ops@contoso.com", "oncall@contoso.com"]
    assert mail["subject"] == "Lead delivery failed: webhook, 3 leads between 14:03 and 14:08 UTC"
    for text in (mail["text"], mail["html"]):
        assert "the service answered 410 Gone" in text and "set WEBHOOK_URL" in text
        assert "hc519cf8782dab51f24fabc10" in text
        assert "python -m leads replay --destination webhook" in text


def test_failure_alert_holds_no_personal_data():
    error = "the service answered 400 Bad Request: duplicate value jane.doe@fabrikam.com, phone +44 20 7946 0958"
    subject, text = alert_text(
        failure_group(errors=[{"error": error, "fix": "check the CRM's duplicate rules", "count": 1}])
    )
    assert leaked(("jane.doe", "fabrikam", "7946", "0958"), subject + text) == []
    assert "check the CRM's duplicate rules" in text


def test_failure_alert_that_cannot_be_sent_is_logged_and_swallowed(fake_acs, caplog):
    from leads.delivery.alerts import _send

    configured = settings(
        EMAIL_CONNECTION_STRING=fake_acs.connection_string_with_wrong_key(),
        EMAIL_SENDER=DEFAULT_SENDER,
        LEADS_ALERT_TO="ops@contoso.com",
    )
    with caplog.at_level(logging.WARNING, logger="leads.delivery.alerts"):
        assert _send(failure_group(), "webhook|x", ("ops@contoso.com",), configured).startswith("ACS answered 401")
    assert "not sent" in caplog.text and "401" in caplog.text
    assert fake_acs.mails == []


# --- python -m leads check ------------------------------------------------------------------------


def test_check_reads_without_sending(fake_acs, tmp_path):
    assert acs_destination(fake_acs).check().ok
    wrong = settings(EMAIL_CONNECTION_STRING=fake_acs.connection_string_with_wrong_key(), EMAIL_SENDER=DEFAULT_SENDER)
    check = EmailDestination(wrong, read_timeout=2).check()
    assert not check.ok and "401" in check.message and "EMAIL_CONNECTION_STRING" in check.fix
    assert fake_acs.mails == []
    outbox = EmailDestination(settings(EMAIL_OUTBOX_DIR=str(tmp_path / "out"))).check()
    assert outbox.ok and "ACS is not configured" in outbox.message


def test_random_faults_still_mail_each_lead_exactly_once(fake_acs):
    """The fake's random mode (5xx, 429, late answers, dropped connections) against retries:
    its own records show one mail per lead."""
    fake_acs.fail_ratio, fake_acs.random_delay = 0.4, 0.8
    fake_acs.random.seed(7)
    destination = EmailDestination(acs_settings(fake_acs), poll_interval=0.02, poll_timeout=0.3, read_timeout=0.4)
    leads = [lead_from(body(user={"Email": f"buyer{n}@fabrikam.com"})) for n in range(8)]
    failures = 0
    for lead in leads:
        for _ in range(30):
            try:
                destination.send(lead, Route(SALES))
                break
            except TransientError:
                failures += 1
        else:
            pytest.fail("a lead was never sent")
    assert failures > 0 and {r.fault for r in fake_acs.requests} - {None}
    for lead in leads:
        assert len(fake_acs.mails_about(lead.lead_id)) == 1
    assert len(fake_acs.mails) == len(leads)


# --- Reply-To: sales presses Reply and writes to the customer -----------------------------------


def test_a_lead_mail_replies_to_the_customer(tmp_path, fake_acs):
    lead = lead_from(body())
    EmailDestination(settings(EMAIL_OUTBOX_DIR=str(tmp_path))).send(lead, Route(SALES))
    message = BytesParser(policy=policy.default).parsebytes((tmp_path / f"{lead.lead_id}.eml").read_bytes())
    assert message["Reply-To"] == "jane.doe@fabrikam.com"
    acs_destination(fake_acs).send(lead, Route(SALES))
    assert fake_acs.mails[0]["reply_to"] == ["jane.doe@fabrikam.com"]


@pytest.mark.parametrize("case", ["masked", "none", "test", "do not contact", "invalid address", "digest"])
def test_no_reply_to_where_sales_must_not_or_cannot_write_to_the_customer(case):
    pii = case if case in ("masked", "none") else "full"
    lead = lead_from(
        body(
            **({"LeadSource": "SPZA-DNC|contoso.contoso-crm"} if case == "do not contact" else {}),
            user={"Email": "not an address"}
            if case == "invalid address"
            else ({"FirstName": "MSFT_TEST_Jane"} if case == "test" else {}),
        )
    )
    configured = settings(EMAIL_PII=pii)
    if case == "digest":
        mail = render_digest([lead, lead_from(body(user={"Email": "other@fabrikam.com"}))], Route(SALES), configured)
    else:
        mail = render_lead(lead, Route(SALES), configured)
    assert mail.reply_to == ()
