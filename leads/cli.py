"""``python -m leads ...``: run the app locally and look at its leads.

Every command reads the app's settings from the environment, after loading
``local.settings.json`` as Core Tools would, so the CLI sees the storage the app uses.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from collections.abc import Sequence

from leads.core.model import Lead
from leads.destinations import REGISTRY
from leads.destinations.routing import MAPPED_DESTINATIONS


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m leads",
        description=__doc__.splitlines()[0].replace("``", ""),
        epilog="Every command is described in docs/cli.md.",
    )
    parser.add_argument(
        "--settings",
        default="local.settings.json",
        metavar="FILE",
        help="local settings file loaded into the environment, or none to read the environment "
        "alone (against Azure) (default: %(default)s)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run function_app.py locally: HTTP routes, timers, queues")
    serve.add_argument(
        "--port",
        type=int,
        help="HTTP port (default: the settings file's Host.LocalHttpPort, which make run writes, else 7071)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    serve.add_argument(
        "--function-key",
        metavar="KEY",
        help="require this key (?code= or x-functions-key) on "
        "function-level routes, as Azure does; needed to serve beyond 127.0.0.1",
    )

    listing = commands.add_parser("list", help="stored leads and rejected records, newest first, a page at a time")
    listing.add_argument("--limit", type=_positive, default=50, help="leads per page (default: %(default)s)")
    listing.add_argument(
        "--since",
        type=_moment,
        metavar="TIME",
        help="only those received at or after TIME (UTC, e.g. 2026-11-01 or 2026-11-01T09:30)",
    )
    listing.add_argument("--until", type=_moment, metavar="TIME", help="only those received before TIME (UTC)")
    listing.add_argument("--cursor", metavar="CURSOR", help="the page after the one that printed this cursor")
    listing.add_argument("--json", action="store_true", help="the page as a JSON array (the next cursor on stderr)")
    listing.add_argument(
        "--all", action="store_true", help="every page, one JSON object per line (an export: memory stays one page)"
    )

    show = commands.add_parser("show", help="one lead, normalised and as received")
    show.add_argument(
        "lead_id", metavar="LEAD_ID", help="a lead id, from list or from the intake's answer; latest: the newest lead"
    )
    show.add_argument("--json", action="store_true", help="the normalised lead as JSON")

    poll = commands.add_parser("poll", help="poll the marketplace table once, now")
    poll.add_argument(
        "--full-scan",
        action="store_true",
        help="read the whole table now (the hourly safety scan), not only the recent days",
    )
    poll.add_argument("--json", action="store_true", help="the counts as JSON")

    status = commands.add_parser(
        "status", help="deliveries open and failed now, counts of recent days, recent failures"
    )
    status.add_argument("--days", type=_positive, default=7, help="count the last DAYS days (default: %(default)s)")
    status.add_argument("--json", action="store_true", help="the report as JSON")

    replay = commands.add_parser("replay", help="deliver failed deliveries again (never a delivered one)")
    replay.add_argument(
        "--lead", metavar="LEAD_ID", help="only this lead's (with those held as older than LEADS_BACKFILL_DAYS)"
    )
    replay.add_argument("--destination", metavar="NAME", choices=REGISTRY, help="only this destination's")
    replay.add_argument(
        "--skipped", action="store_true", help="instead: deliver the leads held as older than LEADS_BACKFILL_DAYS"
    )

    verify = commands.add_parser(
        "verify",
        help="compare every index entry, count, identity and email row with the "
        "leads and deliveries they describe; report each difference by kind",
    )
    verify.add_argument(
        "--since",
        type=_positive,
        metavar="DAYS",
        dest="since_days",
        help="only the leads of the last DAYS days (and every open or failed delivery); default: the whole store",
    )
    verify.add_argument("--repair", action="store_true", help="mend each difference found")
    verify.add_argument("--json", action="store_true", help="the report as JSON, each difference with its ids")

    reindex = commands.add_parser("reindex", help="index the leads of a store written before the indexes (once)")
    reindex.add_argument("--again", action="store_true", help="read the whole store once more")

    check = commands.add_parser(
        "check",
        help="storage, routing and every enabled destination's settings and "
        "credentials, each ok, warning or problem, with the fix",
    )
    check.add_argument("--json", action="store_true", help="each line as JSON, with its state")

    mapping = commands.add_parser(
        "mapping",
        help="what each CRM field gets, and from where, for a sample lead: the "
        "built-in mapping and the destination's <CRM>_MAPPING setting",
    )
    mapping.add_argument(
        "destination",
        metavar="DESTINATION",
        choices=MAPPED_DESTINATIONS,
        help=f"one of {', '.join(MAPPED_DESTINATIONS)}",
    )
    mapping.add_argument(
        "--mapping",
        metavar="NAME",
        default="",
        help='a named mapping of the setting (the one a routing rule\'s "mapping" picks); default: its default',
    )
    mapping.add_argument("--json", action="store_true", help="the fields as JSON")

    test_lead = commands.add_parser(
        "test-lead",
        help="send an MSFT_TEST_ lead as the marketplace's Validate "
        "button does, wait for it, and report each destination's outcome",
    )
    test_lead.add_argument(
        "--via",
        choices=("http", "table"),
        default="http",
        help="http: POST it to --url; table: write it into the marketplace table and wait "
        "for the app's table poll (LEADS_POLL_SCHEDULE, every 30 s by default) "
        "(default: %(default)s)",
    )
    test_lead.add_argument(
        "--url",
        help="the intake to POST to with --via http (default: the local app, "
        "http://127.0.0.1:PORT/api/leads with the settings file's Host.LocalHttpPort, which make "
        "run writes, else 7071)",
    )
    test_lead.add_argument("--timeout", type=float, default=120, help="seconds to wait (default: %(default)s)")
    test_lead.add_argument("--json", action="store_true", help="the report as JSON (progress still goes to stderr)")

    forget = commands.add_parser(
        "forget",
        help="erase one person's personal data from every row and outbox mail "
        "that holds it, keeping ids, times and delivery outcomes",
    )
    who = forget.add_mutually_exclusive_group(required=True)
    who.add_argument(
        "--email",
        metavar="ADDRESS",
        help="every lead and rejected record holding this address (found "
        "by the email index; until reindex completes it, by reading every row)",
    )
    who.add_argument("--lead", metavar="LEAD_ID", help="this lead or rejected record only (point reads)")
    forget.add_argument("--json", action="store_true", help="what was erased, as JSON")

    importing = commands.add_parser(
        "import",
        help="recover leads from files: Partner Center Leads downloads, JSON bodies, or the "
        "marketplace table as CSV; prints what was already received, erased, imported or refused, and what "
        "the store has that the files do not",
    )
    importing.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="one or more files (Partner Center downloads "
        "hold 5,000 rows at most: download the rest by date and give them all)",
    )
    importing.add_argument(
        "--format",
        default="auto",
        choices=("auto", "jsonl", "json", "table-csv", "partner-center"),
        help="the file's format (default: told from its name and first line)",
    )
    importing.add_argument(
        "--column",
        action="append",
        default=[],
        metavar="FIELD=HEADER",
        help="read FIELD (email, firstName, createdAt, ...) from the column HEADER of a Partner "
        "Center file; repeat for several",
    )
    importing.add_argument(
        "--encoding",
        metavar="CODEC",
        help="the files' text encoding (default: told from a BOM or a trial decode: UTF-8, UTF-16, Windows-1252)",
    )
    importing.add_argument(
        "--table",
        metavar="NAME",
        help="the marketplace table a table-csv file was exported from (default: MARKETPLACE_TABLE_NAME)",
    )
    importing.add_argument(
        "--deliver",
        action="store_true",
        help="deliver leads older than LEADS_BACKFILL_DAYS too (default: store them, unsent)",
    )
    importing.add_argument(
        "--dry-run", action="store_true", help="print the column mapping and the first rows as leads; store nothing"
    )
    importing.add_argument("--json", action="store_true", help="the report as JSON")
    importing.add_argument(
        "--csv",
        metavar="PATH",
        help="also write each row's outcome, and the leads only the store has, to a CSV file "
        "(cells a spreadsheet would run as formulas start with ')",
    )

    for command in commands._choices_actions:  # `COMMAND --help` opens with what the command does
        commands.choices[command.dest].description = command.help
    args = parser.parse_args(argv)
    from leads.core.local_settings import load_local_settings

    args.settings_file = None if args.settings.lower() == "none" else args.settings
    args.argv = list(sys.argv[1:] if argv is None else argv)
    load_local_settings(args.settings_file)
    from leads.core.settings import get_settings

    get_settings.cache_clear()  # read from the environment the settings file has just completed
    handlers = {
        "serve": _serve,
        "list": _list,
        "show": _show,
        "poll": _poll,
        "status": _status,
        "replay": _replay,
        "verify": _verify,
        "reindex": _reindex,
        "test-lead": _test_lead,
        "check": _check,
        "forget": _forget,
        "import": _import,
        "mapping": _mapping,
    }
    handler = handlers[args.command]
    if args.command in ("list", "show", "status") and not getattr(args, "all", False):
        handler = _waited_on(handler)
    return _told(handler, args)


def _told(handler, args: argparse.Namespace) -> int:
    """Run a command; a setting it cannot read, or storage that does not answer, ends it with a
    few lines saying what it tried and what to do (docs/cli.md), never a traceback."""
    from azure.core.exceptions import AzureError
    from pydantic import ValidationError

    from leads.core.storage import StorageNotConfigured

    try:
        return handler(args)
    except ValidationError as error:
        from leads.ops.advice import SETTINGS_FIX, setting_problems

        lines = [f"{args.command}: a setting's value cannot be used:"]
        lines += [f"  {problem}" for _, problem in setting_problems(error)]
        print("\n".join([*lines, f"  To do: {SETTINGS_FIX}."]), file=sys.stderr)
        return 2
    except (AzureError, StorageNotConfigured) as error:
        from leads.core.settings import get_settings
        from leads.ops.advice import storage_message

        print(storage_message(args.command, error, get_settings()), file=sys.stderr)
        return 1


def _waited_on(handler):
    """A command a person waits on, its reads cut at ``COMMAND_SECONDS`` (``list --all``, an
    export, and the commands that do work rather than read it, take what their storage calls
    take); storage that did not answer in time ends it as :func:`_told` says."""
    from leads.core.deadlines import COMMAND_SECONDS
    from leads.core.http import deadline

    def within(args: argparse.Namespace) -> int:
        with deadline(COMMAND_SECONDS):
            return handler(args)

    return within


def _serve(args: argparse.Namespace) -> int:
    import errno

    from pydantic import ValidationError

    from leads.local.serve import serve

    try:
        from leads.core.local_settings import local_http_port

        args.port = args.port or local_http_port(args.settings_file)
        serve(port=args.port, host=args.host, settings_file=args.settings_file, function_key=args.function_key)
    except ValidationError:
        raise  # a setting the model refuses (one out of its range): _told names it and what it must be
    except ValueError as problem:  # serving beyond loopback without a key
        print(f"serve: {problem}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        print(
            f"port {args.port} is already in use on {args.host}: stop what holds it, or choose another "
            f"with --port (make run PORT=...)",
            file=sys.stderr,
        )
        return 1
    return 0


def _list(args: argparse.Namespace) -> int:
    from itertools import islice

    from leads.store.lead_store import LeadStore

    store = LeadStore.from_settings()
    store.ensure_tables()
    if not store.index.built():
        print("The index is still being built: older leads may be missing (python -m leads reindex).", file=sys.stderr)
    # A page is read with one lead more than it shows, which tells whether there is a next one.
    after = args.cursor and args.cursor.replace(CURSOR_SEPARATOR, "|")  # "|" too: the cursors of earlier versions
    listed = store.newest(since=args.since, until=args.until, after=after, page=args.limit + (not args.all))
    if args.all:
        for item in listed:
            print(json.dumps(_listed_dict(item.record), ensure_ascii=False), flush=False)
        return 0
    page = list(islice(listed, args.limit + 1))
    more, page = len(page) > args.limit, page[: args.limit]
    next_page = f"Next page: {_next_page_command(args, page[-1].cursor)}" if more else None
    if args.json:
        print(json.dumps([_listed_dict(item.record) for item in page], indent=2, ensure_ascii=False))
        if next_page:
            print(next_page, file=sys.stderr)
        return 0
    if not page:
        print("No leads yet." if not (args.since or args.until or args.cursor) else "No leads here.")
        return 0
    print(f"{'LEAD ID':<26} {'RECEIVED (UTC)':<19} {'VIA':<5} {'SOURCE':<17} {'ACTION':<14} {'OFFER':<28} COMPANY")
    for item in page:
        record = item.record
        if isinstance(record, dict):
            print(
                f"{record['leadId']:<26} {record['receivedAt'][:19].replace('T', ' ')} REJECTED: "
                f"{_cut(record['error'], 90)}"
            )
            continue
        lead = record
        flags = " [TEST]" * lead.is_test + " [DO NOT CONTACT]" * lead.do_not_contact
        print(
            f"{lead.lead_id:<26} {lead.received_at:%Y-%m-%d %H:%M:%S} {lead.channel:<5} "
            f"{_cut(lead.source_words, 17):<17} {_cut(lead.action_words, 14):<14} "
            f"{_cut(lead.offer_title or lead.offer_id, 28):<28} {lead.company or '-'}{flags}"
        )
    if next_page:
        print(f"\n{next_page}")
    return 0


# The cursor printed for the next page: the index's own (``<time>|<lead id>``, digits and letters)
# with "|" written as "." so that it pastes into a shell as it is.
CURSOR_SEPARATOR = "."


def _next_page_command(args: argparse.Namespace, cursor: str) -> str:
    """This command as it was run, with the cursor of the next page: pasted, it prints that page."""
    import shlex

    launcher = ["python", "-m", "leads"]
    typed = getattr(sys, "orig_argv", [])
    if "-m" in typed and typed[typed.index("-m") + 1 : typed.index("-m") + 2] == ["leads"]:
        launcher = typed[: typed.index("-m") + 2]  # as typed: .venv/bin/python -m leads
    given, options = args.argv, []
    skip = False
    for item in given:
        if skip:
            skip = False
        elif item == "--cursor":
            skip = True
        elif not item.startswith("--cursor="):
            options.append(item)
    return shlex.join([*launcher, *options, "--cursor", cursor.replace("|", CURSOR_SEPARATOR)])


def _listed_dict(record) -> dict:
    """A lead or a rejected record as JSON can hold it (a refused body as text, or base64)."""
    if not isinstance(record, dict):
        return record.to_dict()
    return json.loads(_describe_rejected(dict(record), as_json=True))


def _show(args: argparse.Namespace) -> int:
    from leads.core.model import Lead
    from leads.store.lead_store import LeadStore

    store = LeadStore.from_settings()
    if args.lead_id == "latest":  # ids are digests, never a word: the newest lead or rejected record
        newest = next(store.newest(page=1), None)
        if newest is None:
            print("no lead is stored yet", file=sys.stderr)
            return 1
        args.lead_id = newest.record.lead_id if isinstance(newest.record, Lead) else newest.record["leadId"]
    lead = store.get(args.lead_id)
    if lead is None:
        rejected = store.rejected(args.lead_id)
        if rejected:
            print(_describe_rejected(rejected, args.json))
            return 0
        print(f"no lead with id {args.lead_id}", file=sys.stderr)
        return 1
    deliveries = store.deliveries.for_lead(lead.lead_id)
    if args.json:
        print(
            json.dumps(
                {**lead.to_dict(), "deliveries": [d.to_dict() for d in deliveries]}, indent=2, ensure_ascii=False
            )
        )
        return 0
    print(_describe(lead, store.duplicates(lead.lead_id), store.same_content(lead.lead_id)))
    for delivery in deliveries:
        print(f"{'Delivery:':<13} {_delivery_line(delivery)}")
    return 0


def _delivery_line(delivery) -> str:
    line = f"{delivery.destination:<10} {delivery.state:<9} attempts {delivery.attempts}"
    if delivery.external_id:
        line += f", id {delivery.external_id}"
    if delivery.state == "retrying" and delivery.next_attempt_at:
        line += f", next attempt at {delivery.next_attempt_at:%H:%M:%S} UTC"
    if delivery.last_error and delivery.state != "delivered":
        from leads.core.telemetry import mask_urls

        line += f"\n{'':<14} {mask_urls(delivery.last_error)}"
    return line


def _status(args: argparse.Namespace) -> int:
    from leads.ops.operations import status

    report = status(days=args.days)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    from leads.ops.dashboard import daily, render
    from leads.store.lead_store import LeadStore

    print(render(report, daily(LeadStore.from_settings(), report.days)))
    if report.oldest_pending:
        oldest = report.oldest_pending
        print(
            f"\nOldest open: {oldest.lead_id} to {oldest.destination}, {oldest.state} since "
            f"{oldest.created_at:%Y-%m-%d %H:%M:%S} UTC"
        )
    if report.recent_failures:
        print("\nRecent failures:")
        for delivery in report.recent_failures:
            print(f"  {delivery.lead_id} {_delivery_line(delivery)}")
    if report.recent_rejections:
        print("\nRecently rejected (python -m leads show ID):")
        for rejected in report.recent_rejections:
            print(
                f"  {rejected['leadId']} {rejected['receivedAt'][:19].replace('T', ' ')} {_cut(rejected['error'], 90)}"
            )
    if verified := report.verified:
        found = ", ".join(f"{kind} {n}" for kind, n in verified["differences"].items()) or "no difference"
        print(
            f"\nLast verify ({verified['at'][:19].replace('T', ' ')} UTC): {found}"
            + (f", {verified['repaired']} repaired" if verified["repaired"] else "")
        )
    return 0


def _verify(args: argparse.Namespace) -> int:
    from leads.store.verify import verify

    def progress(report) -> None:
        print(f"\rverified {sum(report.checked.values())} rows...", end="", file=sys.stderr, flush=True)

    report = verify(since_days=args.since_days, repair=args.repair, progress=progress if sys.stderr.isatty() else None)
    if sys.stderr.isatty():
        print("\r", end="", file=sys.stderr)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 1 if report.differences and not args.repair else 0
    scope = f"the last {args.since_days} days and the open work" if args.since_days else "the whole store"
    print(f"Verified {scope}: " + ", ".join(f"{n} {what}" for what, n in sorted(report.checked.items())) + ".")
    for difference in report.differences:
        print(f"  {difference.kind}: {difference.about}" + (" (repaired)" if difference.repaired else ""))
    if not report.differences:
        print("No difference: every derived row agrees with what it describes.")
    elif not args.repair:
        print(f"{len(report.differences)} differences; python -m leads verify --repair mends them.")
    return 1 if report.differences and not args.repair else 0


def _replay(args: argparse.Namespace) -> int:
    from leads.ops.operations import replay
    from leads.store.lead_store import LeadStore

    if args.lead and LeadStore.from_settings().get(args.lead) is None:
        print(f"replay: no lead with id {args.lead}", file=sys.stderr)
        return 2
    replayed = replay(lead_id=args.lead, destination=args.destination, skipped=args.skipped)
    for delivery in replayed:
        print(f"replaying {delivery.lead_id} to {delivery.destination}")
    kind = "held" if args.skipped else "failed"
    print(f"{len(replayed)} {kind} deliveries queued again." if replayed else f"No {kind} deliveries to replay.")
    if not args.skipped:
        _tell_retrying(LeadStore.from_settings(), args.lead, args.destination)
    return 0


def _tell_retrying(store, lead_id: str | None, destination: str | None, most: int = 10) -> None:
    """The deliveries still being retried (replay leaves them: each is sent again at its next
    attempt), so that "nothing to replay" never hides one. Reads the lead's deliveries, or the
    open deliveries' index: the open work, never the history."""
    if lead_id:
        open_ones = store.deliveries.for_lead(lead_id)
    else:
        pairs = dict.fromkeys((entry.lead_id, entry.destination) for entry in store.index.open())
        open_ones = (store.deliveries.get(lead, name) for lead, name in pairs if not destination or name == destination)
    retrying = [
        delivery
        for delivery in open_ones
        if delivery and delivery.state == "retrying" and (not destination or delivery.destination == destination)
    ]
    for delivery in retrying[:most]:
        print(f"still retrying: {delivery.lead_id} {_delivery_line(delivery)}")
    if len(retrying) > most:
        print(f"... and {len(retrying) - most} more being retried (python -m leads status)")
    if retrying:
        print(
            "Replay leaves a delivery that is being retried: it is sent again at its next attempt, and once it "
            "has failed for good (LEADS_RETRY_HOURS), replay sends it again."
        )


def _forget(args: argparse.Namespace) -> int:
    from leads.store.erasure import OUTSIDE_NOTE, forget_email, forget_lead

    if args.email is not None and "@" not in args.email:
        print(f"forget: --email {args.email!r} is not an email address", file=sys.stderr)
        return 2
    done = forget_email(args.email) if args.email is not None else forget_lead(args.lead)
    if done is not None and done.read_every_row:
        print(
            "forget: the email index is not complete yet (a store from before it): every lead and rejected "
            "row was read to find the address; run python -m leads reindex once to index them.",
            file=sys.stderr,
        )
    if done is None:
        print(f"forget: no lead or rejected record with id {args.lead}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(done.to_dict(), indent=2))
        return 0
    for lead_id in done.leads:
        print(f"erased lead {lead_id}: its personal data and raw input")
    for lead_id in done.already_erased:
        print(f"lead {lead_id} was erased already (erased again: nothing personal was left)")
    for record_id in done.rejected:
        print(f"erased rejected record {record_id}: its content and reason")
    for delivery in done.deliveries_skipped:
        print(f"delivery {delivery} was still open: skipped, never sent")
    if done.errors_erased:
        print(f"{done.errors_erased} deliveries' last errors erased (they may quote values)")
    for name in done.outbox_files:
        print(f"deleted outbox mail {name}")
    if not (done.leads or done.already_erased or done.rejected or done.outbox_files):
        print("Nothing found to erase" + (f" ({done.scanned} rows read)." if args.email is not None else "."))
    for sent in done.sent_elsewhere:
        if sent.get("inFlight"):
            print(f"being sent to {sent['destination']} (lead {sent['leadId']}): it may have arrived; erase it there")
            continue
        print(
            f"sent to {sent['destination']}"
            + (f" as {sent['externalId']}" if sent["externalId"] else "")
            + f" (lead {sent['leadId']}): erase it there"
        )
    print(OUTSIDE_NOTE)
    return 0


def _reindex(args: argparse.Namespace) -> int:
    from leads.ops.operations import reindex

    done = reindex(again=args.again)
    if not done:
        print("The index is complete (use --again to read the whole store once more).")
    if done and (index := done["index"]):
        print(f"Indexed {index['Leads']} leads and rejected records, {index['Deliveries']} open or failed deliveries.")
    if done and (identities := done["identities"]):
        print(
            f"Indexed the email addresses of {identities['Leads']} leads and {identities['Rejected']} rejected "
            f"records ({identities['Addresses']} addresses): forget --email reads that index now."
        )
    return 0


def _check(args: argparse.Namespace) -> int:
    from leads.ops.checks import STATES, run_checks, what_it_means

    results = run_checks()  # a refused setting is a problem line of its own
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "name": name,
                        "state": c.state,
                        "ok": c.ok,
                        "message": c.message,
                        "fix": c.fix,
                        "forALead": what_it_means(name, c),
                    }
                    for name, c in results
                ],
                indent=2,
            )
        )
    else:
        for name, result in results:
            print(f"{result.state:<8} {name:<14} {result.message}")
            for label, text in (("fix", result.fix), ("for a lead", what_it_means(name, result))):
                if text:
                    print(f"{'':<23} {label}: {text}")
        print("\n" + "; ".join(f"{state}: {meaning}" for state, meaning in STATES.items()) + ".")
    return 0 if all(result.ok for _, result in results) else 1


def _mapping(args: argparse.Namespace) -> int:
    from leads.core.settings import get_settings
    from leads.destinations.mapping import MappingError, preview

    try:
        heading, rows = preview(args.destination, get_settings(), args.mapping)
    except MappingError as exc:
        print(f"{exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False, default=str))
        return 0
    print(heading)
    width = max(len(row["field"]) for row in rows) + 2
    for row in rows:
        value = "(none)" if row["value"] is None else json.dumps(row["value"], ensure_ascii=False, default=str)
        print(f"  {row['field']:<{width}}{_cut(value, 70)}")
        print(f"  {'':<{width}}from {row['from']}" + (f" ({row['source']})" if row["source"] == "setting" else ""))
    return 0


def _test_lead(args: argparse.Namespace) -> int:
    from leads.core.local_settings import local_intake_url
    from leads.ops.testlead import run_test_lead

    report = run_test_lead(
        via=args.via,
        url=args.url or local_intake_url(args.settings_file),
        timeout=args.timeout,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"Test lead {report['leadId']} sent via {report['via']}.")
        for delivery in report["deliveries"]:
            print(
                f"  {delivery['destination']:<10} {delivery['state']:<9} "
                f"{delivery.get('externalId') or ''} {delivery.get('lastError') or ''}".rstrip()
            )
        if not report["deliveries"]:
            print("  no destination is routed test leads (see LEADS_TEST_LEADS and LEADS_ROUTING)")
    return 0 if report["ok"] else 1


def _poll(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from leads.intake.poll import poll_marketplace

    result = poll_marketplace(full_scan=args.full_scan)
    if args.json:
        print(json.dumps(asdict(result), default=str, indent=2))
        return 0
    print(result.summary() + (" (the marketplace table does not exist yet)" * result.table_missing))
    if result.already_stored:
        print(
            f"Already stored: {result.already_stored} rows read again: taken in by an earlier poll (each poll reads "
            "again the last LEADS_POLL_OVERLAP_MINUTES, for rows whose Timestamp lands late)."
        )
    if result.mode == "days":
        print(
            "This poll read the recent days' partitions (PartitionKey: the day a row was written). A row keyed "
            "by another day is read by the hourly safety scan, or now by: python -m leads poll --full-scan"
        )
    return 0


def _import(args: argparse.Namespace) -> int:
    from leads.intake.imports import CsvReport, ImportError_, Progress, import_files

    columns = {}
    for item in args.column:
        name, equals, header = item.partition("=")
        if not equals or not name.strip() or not header.strip():
            print(f"--column {item}: expected FIELD=HEADER, e.g. --column email='Work email'", file=sys.stderr)
            return 2
        columns[name.strip()] = header.strip()
    progress = Progress()
    out = open(args.csv, "w", newline="", encoding="utf-8-sig") if args.csv else None  # noqa: SIM115
    written = CsvReport(out) if out else None
    try:
        report = import_files(
            args.files,
            format=args.format,
            columns=columns,
            encoding=args.encoding,
            dry_run=args.dry_run,
            deliver=args.deliver,
            table_name=args.table,
            progress=progress,
            on_outcome=written,
        )
        if written and report.in_store_only:
            written.in_store_only(report.in_store_only)
    except ImportError_ as exc:
        print(f"import: {exc}", file=sys.stderr)
        return 2
    finally:
        progress.done()
        if out:
            out.close()
    print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) if args.json else report.text())
    return 1 if report.refused else 0


def _describe_rejected(rejected: dict, as_json: bool) -> str:
    """A rejected record: a marketplace row's properties, or a refused body as received (as
    text when it is UTF-8, else base64)."""
    body = rejected.pop("body", None)
    if body is not None:
        try:
            rejected["body"] = body.decode("utf-8")
        except UnicodeDecodeError:
            rejected["bodyBase64"] = base64.b64encode(body).decode()
    if as_json:
        return json.dumps(rejected, indent=2, ensure_ascii=False)
    if body is None:
        return (
            f"Marketplace row {rejected['leadId']} was not a usable lead: {rejected['error']}\n"
            f"As received: {json.dumps(rejected['raw'], ensure_ascii=False)}"
        )
    kept = f"first {len(body)} of {rejected['size']} bytes" if rejected["truncated"] else f"{len(body)} bytes"
    return (
        f"Body {rejected['leadId']} POSTed {rejected['receivedAt']} was refused: {rejected['error']}\n"
        f"As received ({kept}{', base64' * ('bodyBase64' in rejected)}): "
        f"{rejected.get('body', rejected.get('bodyBase64'))}"
    )


def _describe(lead: Lead, duplicates: int, same_content: int = 1) -> str:
    from leads.destinations.notice import campaign_text

    rows = [
        ("Lead", lead.lead_id),
        ("Received", f"{lead.received_at:%Y-%m-%d %H:%M:%S} UTC via {lead.channel}"),
        ("Source", lead.source_words),
        ("Action", lead.action_words),
        ("Offer", " / ".join(part for part in (lead.offer_title, lead.offer_id) if part) or None),
        ("Name", lead.full_name),
        ("Email", (lead.email or "") + (" (not a valid address)" if lead.email_valid is False else "") or None),
        ("Phone", lead.phone),
        ("Country", lead.country),
        ("Company", lead.company),
        ("Title", lead.title),
        ("Description", lead.description),
        ("Campaign", campaign_text(lead.campaign)),  # as the mail reads: "campaigns: winter-promo, partner-x"
        (
            "Flags",
            ", ".join(
                flag
                for flag, on in (
                    ("test lead", lead.is_test),
                    ("do not contact", lead.do_not_contact),
                    ("personal data withheld", lead.pii_withheld),
                )
                if on
            )
            or None,
        ),
        ("Duplicates", str(duplicates) if duplicates else None),
        ("Same content", f"{same_content} leads in all" if same_content > 1 else None),
        ("As received", json.dumps(lead.raw, ensure_ascii=False)),
    ]
    return "\n".join(f"{label + ':':<13} " + value.replace("\n", "\n" + " " * 14) for label, value in rows if value)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def _moment(text: str):
    """A UTC time from the command line: a date, or a date and time (ISO 8601)."""
    from datetime import UTC, datetime

    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date or time like 2026-11-01 or 2026-11-01T09:30"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _cut(text: str | None, width: int) -> str:
    from leads.destinations.notice import within

    return within(text or "-", width)
