"""Who a lead is about, findable without reading history: small rows beside the lead store.

**Identities, for ``import``.** A lead is identified by its email, or by first and last name with
company, together with its offer (the same person asking about two offers is two leads). Each
stored lead that carries such an identity gets one row in the app's ``<prefix>Identities`` table,
in the partition of the day it arrived: PartitionKey ``<received day, YYYY-MM-DD>``, RowKey ``<lead
id>``, ``Who`` the digests of its identities, ``HasEmail`` whether it names an email (two leads
naming different emails are two people, whatever their names). "Was a lead from this person about
this offer received within a day of then?" reads the three day partitions around then, whatever
the store holds (:mod:`leads.intake.matching`, which also reads the tombstones of erased leads kept in
the same partitions, :mod:`leads.store.tombstones`).

**Email addresses, for ``forget --email``.** Every address a lead or rejected record holds (the
lead's email, and any address anywhere in its normalised fields or raw input, found by
:data:`ADDRESS`) gets a row in the same table, in one of :data:`BUCKETS` partitions picked by the
address's digest: PartitionKey ``email|<its first hex digit>``, RowKey ``<digest>|<record
id>|lead`` (or ``|rejected``). Finding a person's rows is one query of one partition's key range
(:meth:`IdentityIndex.holding`), however many leads others sent, and the rows of a poll page or
an import window share their few partitions, so they go in a few transactions. (Versions before
kept each address in a partition of its own, ``email|<digest>``, RowKey ``<record id>|lead``:
those rows are read and deleted as well, and ``verify`` takes them as they are.) An address's
*key* is ``email|<digest>`` wherever its row lies. A record holding more than
:data:`MAX_ADDRESSES` addresses (a refused body full of them) gets that many rows and one in
``email|crowded``, which every lookup also reads and checks by content, so a flood of addresses in
one body costs a bounded number of writes and no lookup misses it.

The rows hold no personal data in clear: keyed digests (:mod:`leads.core.pseudonyms`), which no one
without the key can check against a guess. Rows written before the key hold plain SHA-256 digests:
they are read and deleted under both forms. Still, the rows say who a lead is about: erasing a
record deletes its rows (:meth:`IdentityIndex.forget`,
:meth:`IdentityIndex.forget_addresses`), and a lead that arrives again once erased (its marketplace
row read again, its content posted again) has the rows just written for it taken back
(:meth:`IdentityIndex.take_back`). Rows are written before the record they point at, so one can
point at a record that was never stored (a crash between the two): a match is checked to exist. A
record whose rows could not be written at all is still stored; the index is then marked incomplete
(:meth:`IdentityIndex.mark_incomplete`) until ``reindex`` has read the store again.

Stores written before these rows existed are indexed once by :meth:`IdentityIndex.build` (``python
-m leads reindex``); its checkpoint row (``reindex``/``identities`` in ``<prefix>Checkpoints``) says
when every stored record is in.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from leads.core.pseudonyms import digest, forms
from leads.core.storage import checkpoint_of, create_batched, mark_done, read_store_once, upsert_batched
from leads.store.rows import LEAD_ROW, REJECTED_ROW, join_text, lead_from_entity

if TYPE_CHECKING:
    from azure.data.tables import TableClient

    from leads.core.model import Lead

# An email address in free text: the HTML standard's "valid email address" (what browsers accept
# in <input type=email>), widened from ASCII to Unicode letters and digits, with the local part
# bounded to RFC 5321's 64 characters so that a long run of text without an "@" is read in linear
# time. Found addresses are compared case-folded, as `forget --email` always did.
ADDRESS = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]{1,64}@[^\W_](?:[\w-]{0,61}[^\W_])?(?:\.[^\W_](?:[\w-]{0,61}[^\W_])?)*")
# A backslash escape of JSON text (a body that did not parse): "a\nx@y" holds x@y, not nx@y.
# What text puts before an address and a local part may also hold (see _with_tails).
_LEADING_MARKS = frozenset("'\"=/?{}|`~!#$%&*^")
_ESCAPE = re.compile(r"\\(?:u[0-9a-fA-F]{4}|.)")
MAX_ADDRESSES = 20
EMAIL_PARTITION = "email|"
CROWDED = EMAIL_PARTITION + "crowded"
BUCKETS = 16  # the email index's partitions: a digest's first hex digit
_META = ("reindex", "identities")  # in the checkpoints table


def identity_texts(lead: Lead) -> tuple[list[str], list[str]]:
    """The identities of a lead before they are digested, by email and by name with company, each
    with the offer's id and with its title (a Partner Center download may name the offer by
    either); none when neither person is known (the marketplace withheld them), since such leads
    cannot be told apart."""
    offers = list(dict.fromkeys(offer.casefold() for offer in (lead.offer_id, lead.offer_title) if offer)) or [""]
    by_email = [f"email|{lead.email.casefold()}|{offer}" for offer in offers] if lead.email else []
    by_name = []
    if lead.first_name and lead.last_name and lead.company:
        person = "|".join(part.casefold() for part in (lead.first_name, lead.last_name, lead.company))
        by_name = [f"name|{person}|{offer}" for offer in offers]
    return by_email, by_name


def identity_keys(lead: Lead) -> list[str]:
    """The keyed digests of a lead's identities (:func:`identity_texts`), as its row holds them."""
    by_email, by_name = identity_texts(lead)
    return [_digest(text) for text in by_email + by_name]


def identity_key_forms(texts: Iterable[str]) -> set[str]:
    """Every digest ``texts`` may be stored under: keyed, and plain as earlier versions wrote them."""
    return {form for text in texts for form in forms(text, 32)}


def address_partition(address: str) -> str:
    """The partition of the rows of the records holding ``address`` (any case)."""
    return EMAIL_PARTITION + _digest(address.strip().casefold())


def address_partition_forms(address: str) -> list[str]:
    """The partitions rows of ``address`` may be in: keyed, and plain as earlier versions wrote them."""
    return [EMAIL_PARTITION + form for form in forms(address.strip().casefold(), 32)]


def address_partitions(addresses: Iterable[str], every_form: bool = False) -> list[str]:
    """The partitions of the rows that index a record holding ``addresses`` (digests only): where
    they are written, or with ``every_form`` where they may be (to delete them)."""
    addresses = list(addresses)
    partition = address_partition_forms if every_form else lambda address: [address_partition(address)]
    partitions = [form for address in addresses[:MAX_ADDRESSES] for form in partition(address)]
    return partitions + ([CROWDED] if len(addresses) > MAX_ADDRESSES else [])


def addresses_of(entity: Mapping[str, Any]) -> list[str]:
    """Every email address a row of the lead store holds, case-folded: a lead's normalised fields
    and raw input, a rejected marketplace row's properties, a refused body's bytes."""
    if "Size" in entity:  # a refused body, as received
        chunks = {
            int(key[4:]): value
            for key, value in entity.items()
            if key.startswith("Body") and key[4:].isdigit() and isinstance(value, bytes)
        }
        body = b"".join(chunks[index] for index in sorted(chunks))
        return _addresses([body.decode("utf-8", "replace")])
    found = _addresses([join_text(name, entity) for name in ("Lead", "Raw") if name in entity])
    if "Lead" in entity:  # a lead's own address, whatever its length (the regex bounds a local part)
        email = (json.loads(join_text("Lead", entity)).get("email") or "").strip().casefold()
        if email and email not in found:
            found = sorted([*found, email])
    return found


def _addresses(values: list[Any]) -> list[str]:
    """The addresses in ``values`` and in everything they hold; text that is JSON is read as JSON
    as well (a marketplace row's ``CustomerInfo``, a lead row's chunks, a refused body)."""
    found: set[tuple[str, ...]] = set()
    stack = list(values)
    while stack:  # not recursive: a refused body may nest deeper than Python recurses
        value = stack.pop()
        if isinstance(value, dict):
            stack += [*value.keys(), *value.values()]
        elif isinstance(value, list):
            stack += value
        elif isinstance(value, str) and "@" in value:
            for text in _around_ats(value):
                found.update(_with_tails(match) for match in ADDRESS.findall(text))
                if "\\" in text:
                    found.update(_with_tails(match) for match in ADDRESS.findall(_ESCAPE.sub(" ", text)))
            if value.lstrip()[:1] in ("{", "["):
                try:
                    stack.append(json.loads(value))
                except (ValueError, RecursionError):
                    pass
    return sorted(address for tails in found for address in tails)


def _with_tails(match: str) -> tuple[str, ...]:
    """A found address, case-folded, and each tail of it that starts after a mark in its local
    part that text puts before an address ("'ann@x.com'", "?email=ann@x.com", "see...ann@x.com"):
    the local part may hold these marks, so the regex takes in that text, and the address the
    person gives is a tail. The marks real local parts are made of (``. - _ +``, a dot doubled
    aside, which an address cannot hold) start no tail: "jane.doe@x.com" is one row, not two."""
    address = match.casefold()
    local = address.partition("@")[0]
    cuts = [
        at + 1
        for at, mark in enumerate(local[:-1])
        if mark in _LEADING_MARKS or (mark == "." and at and local[at - 1] == ".")
    ]
    return (address, *(address[cut:] for cut in cuts))


def _around_ats(text: str) -> list[str]:
    """The stretches of ``text`` an address in it can span (64 characters before an "@", 253
    after): a long text is read near its "@"s only, so a refused body of half a megabyte of
    letters costs a scan, not a regex attempt at every one of its characters."""
    if len(text) <= 4096:
        return [text]
    spans: list[list[int]] = []
    for at in re.finditer("@", text):
        low, high = max(0, at.start() - 64), at.start() + 254
        if spans and low <= spans[-1][1]:
            spans[-1][1] = high
        else:
            spans.append([low, high])
    return [text[low:high] for low, high in spans]


class IdentityIndex:
    def __init__(self, table: TableClient, leads: TableClient, checkpoints: TableClient) -> None:
        self.table = table
        self.leads = leads
        self.checkpoints = checkpoints

    def record(self, lead: Lead, addresses: Iterable[str] = ()) -> None:
        """Index a lead under its identities and the email ``addresses`` it holds
        (:func:`addresses_of` its row). The identity row goes first and names the email rows
        (``Addresses``, their partitions: digests only), so that whoever finds it stale (its lead
        never stored: the intake died in between) can remove them too, from the day's partition
        alone. It is created, never replaced: one that exists is this lead's own (an earlier
        attempt) or, for a repeat, the stored lead's, which a repeat must not overwrite."""
        from azure.core.exceptions import ResourceExistsError

        addresses = list(addresses)
        if row := _identity_row(lead, addresses):
            try:
                self.table.create_entity(row)
            except ResourceExistsError:
                pass
        self.record_addresses(lead.lead_id, "lead", addresses)

    def record_many(self, leads: Iterable[tuple[Lead, list[str]]]) -> None:
        """:meth:`record` for many leads at once: their identity rows created in one transaction
        per day, then their email rows in one per bucket (a poll page's or an import window's)."""
        identity_rows, email_rows = [], []
        for lead, addresses in leads:
            if row := _identity_row(lead, addresses):
                identity_rows.append(row)
            email_rows += _address_rows(lead.lead_id, "lead", addresses)
        create_batched(self.table, identity_rows)
        upsert_batched(self.table, email_rows)

    def take_back(
        self, lead: Lead, addresses: Iterable[str], stored_received_at: datetime | None, erased: bool
    ) -> None:
        """Undo what :meth:`record` wrote for ``lead``, which turned out to be stored already
        (received at ``stored_received_at``), where it is not that lead's own: every row when that
        lead was erased (nothing may name an erased lead again: a row read again, a repeat posted);
        else the identity row of a repeat, deleted when it fell on another day than the stored
        lead's (erasing a lead deletes its own day's row only), and the email rows of addresses
        the stored lead does not hold."""

        if erased:
            self.forget(lead)
            self.forget_addresses(lead.lead_id, "lead", addresses)
            return
        if stored_received_at is None or stored_received_at == lead.received_at:
            return
        if _day(stored_received_at) != _day(lead.received_at):
            self.forget(lead)  # this repeat's own row, in its own day
        # The email rows of addresses the repeat holds and the stored lead does not (in its raw
        # input only: its normalised content is the stored lead's) name a record that does not
        # hold them. Only a repeat whose raw input names more costs the read of the stored row.
        from leads.store.rows import lead_entity

        content = address_partitions(addresses_of(lead_entity(lead.model_copy(update={"raw": None}))))
        maybe = [partition for partition in address_partitions(addresses) if partition not in content]
        stored = self._row(_day(stored_received_at), lead.lead_id) if maybe else None
        if stored is not None and "Addresses" in stored:
            own = set(json.loads(stored["Addresses"]))
            self.forget_partitions(lead.lead_id, "lead", [partition for partition in maybe if partition not in own])

    def _row(self, day: str, lead_id: str) -> Mapping[str, Any] | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self.table.get_entity(day, lead_id)
        except ResourceNotFoundError:
            return None

    def record_addresses(self, record_id: str, row_key: str, addresses: Iterable[str]) -> None:
        """Index the lead store's row ``record_id``/``row_key`` under each of ``addresses``."""
        upsert_batched(self.table, _address_rows(record_id, row_key, list(addresses)))

    def holding(self, address: str) -> Iterator[tuple[str, str, bool, datetime | None]]:
        """The rows of the lead store said to hold ``address``, as (record id, row key, crowded?,
        when the index row was written), from :meth:`email_rows`. The caller checks each record
        by content: a row may name a record that does not hold the address (written for a repeat
        that held it in its raw input) or that was never stored."""
        for row in self.email_rows(address):
            _, record_id, row_key = email_row_key(row)
            yield record_id, row_key, row["PartitionKey"] == CROWDED, row.metadata.get("timestamp")

    def email_rows(self, address: str) -> Iterator[Any]:
        """The email rows of ``address`` and the crowded rows: one key range of one bucket per
        digest form, the partition an earlier version kept it in, and the crowded partition."""
        select = ["PartitionKey", "RowKey", "Timestamp"]
        for key in address_partition_forms(address):
            digest_ = key[len(EMAIL_PARTITION) :]  # its rows' keys: <digest>|<record>|<row>, before <digest>}
            query = "PartitionKey eq @p and RowKey gt @low and RowKey lt @high"
            parameters = {"p": EMAIL_PARTITION + digest_[0], "low": f"{digest_}|", "high": f"{digest_}}}"}
            yield from self.table.query_entities(query, parameters=parameters, select=select)
        for partition in (*address_partition_forms(address), CROWDED):  # as earlier versions kept them
            yield from self.table.query_entities("PartitionKey eq @p", parameters={"p": partition}, select=select)

    def forget_addresses(self, record_id: str, row_key: str, addresses: Iterable[str]) -> None:
        """Delete the rows that index the record under ``addresses``, in either form (and its
        crowded row if it has that many)."""
        self.forget_partitions(record_id, row_key, address_partitions(addresses, every_form=True))

    def forget_partitions(self, record_id: str, row_key: str, partitions: Iterable[str]) -> None:
        """Delete the record's rows under the keys ``partitions`` (:func:`address_partitions`),
        wherever they lie: in their bucket, and where an earlier version kept them."""
        for key in partitions:
            for location in {key_location(key, record_id, row_key), (key, f"{record_id}|{row_key}")}:
                self.table.delete_entity(*location)  # a row not there answers 404, which the SDK takes as done

    # --- indexing a store written before these rows ---------------------------------------------

    def built(self) -> bool:
        """Whether every record stored before the email rows existed has been indexed."""
        return bool(checkpoint_of(self.checkpoints, _META).get("Done"))

    def mark_built(self) -> None:
        """A new store: nothing was stored before the email rows."""
        mark_done(self.checkpoints, _META)

    def mark_incomplete(self) -> None:
        """A record was stored without its rows (their writes failed, before it and after): until
        :meth:`build` has read the store again (``reindex``), ``forget --email`` reads every row
        rather than miss it."""
        self.checkpoints.upsert_entity({"PartitionKey": _META[0], "RowKey": _META[1], "Done": False, "ResumeFrom": ""})

    def build(self, seconds: float | None = None, again: bool = False, page: int = 1000) -> dict[str, Any]:
        """Write the identity and email rows of every lead and rejected record in the store, once
        (see :func:`leads.store.index.read_store_once`); erased records hold nothing to index."""
        counts = ("Leads", "Rejected", "Addresses")
        return read_store_once(self.leads, self.checkpoints, _META, self._index_page, counts, seconds, again, page)

    def _index_page(self, entities: list[Mapping[str, Any]]) -> dict[str, int]:
        counts, rows = {"Leads": 0, "Rejected": 0, "Addresses": 0}, []
        for entity in entities:
            expected = rows_for(entity)
            if expected is None:
                continue
            rows += expected
            counts["Leads" if entity["RowKey"] == LEAD_ROW else "Rejected"] += 1
            counts["Addresses"] += sum(1 for row in expected if row["PartitionKey"].startswith(EMAIL_PARTITION))
        upsert_batched(self.table, rows)
        return counts

    def forget(self, lead: Lead) -> bool:
        """Delete the row of ``lead``'s identities; whether there was one."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            self.table.delete_entity(_day(lead.received_at), lead.lead_id)
        except ResourceNotFoundError:
            return False
        return True


def rows_for(entity: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The identity and email rows a row of the lead store calls for (None: a row of another kind,
    or an erased record, which holds nothing to index). One place for what intake writes,
    ``reindex`` writes again and ``verify`` expects."""
    row_key = entity["RowKey"]
    if row_key not in (LEAD_ROW, REJECTED_ROW) or entity.get("ErasedAt") is not None:
        return None
    rows = []
    addresses = addresses_of(entity)
    if row_key == LEAD_ROW:
        try:
            rows += [row] if (row := _identity_row(lead_from_entity(entity), addresses)) else []
        except ValueError:  # a row no version could read back: its addresses are still indexed
            pass
    return rows + _address_rows(entity["PartitionKey"], row_key, addresses)


def _identity_row(lead: Lead, addresses: list[str]) -> dict[str, Any] | None:
    """The row of a lead in its day's partition: its identities (``Who``, for ``import``) and the
    partitions of its email rows (``Addresses``); none for a lead with neither."""
    keys = identity_keys(lead)
    if not keys and not addresses:
        return None
    return {
        "PartitionKey": _day(lead.received_at),
        "RowKey": lead.lead_id,
        "Who": " ".join(keys),
        "HasEmail": bool(lead.email),
        "Addresses": json.dumps(address_partitions(addresses)),
        "ReceivedAt": lead.received_at,
    }


def key_location(key: str, record_id: str, row_key: str) -> tuple[str, str]:
    """Where the email row of address key ``key`` (``email|<digest>``, or :data:`CROWDED`) for
    the lead store's row ``record_id``/``row_key`` lies: (PartitionKey, RowKey)."""
    if key == CROWDED:
        return CROWDED, f"{record_id}|{row_key}"
    digest_ = key[len(EMAIL_PARTITION) :]
    return f"{EMAIL_PARTITION}{digest_[0]}", f"{digest_}|{record_id}|{row_key}"


def email_row_key(row: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """(address key, record id, row key) of an email row in either layout; None for another row."""
    partition, row_key = row["PartitionKey"], row["RowKey"]
    if not partition.startswith(EMAIL_PARTITION):
        return None
    if len(partition) == len(EMAIL_PARTITION) + 1:  # a bucket: <digest>|<record>|<row>
        digest_, record_id, kind = row_key.rsplit("|", 2)
        return EMAIL_PARTITION + digest_, record_id, kind
    record_id, kind = row_key.rsplit("|", 1)  # crowded, or an earlier version's partition of one address
    return partition, record_id, kind


def _address_rows(record_id: str, row_key: str, addresses: list[str]) -> list[dict[str, Any]]:
    rows = []
    for key in address_partitions(addresses):
        partition, location = key_location(key, record_id, row_key)
        rows.append({"PartitionKey": partition, "RowKey": location})
    return rows


def _digest(text: str) -> str:
    return digest(text)[:32]


def _day(when: datetime) -> str:
    return f"{when.astimezone(UTC):%Y-%m-%d}"
