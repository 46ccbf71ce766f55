"""Wire messages of a training job: announcement, bids, work units, results, round summaries.

Flow (see docs/ARCHITECTURE.md): the client announces a :class:`JobAnnounce` on the market topic; fitting
trainers answer with a signed :class:`Bid` over RPC; for each round the client sends every
chosen trainer a :class:`WorkUnit` over RPC; the trainer trains, uploads its encrypted update,
commits its hash on chain and answers with :class:`UnitDone` over RPC; the client publishes a
:class:`RoundResult` on the job topic after settling, and :class:`JobFinished` at the end.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from fedswarm.protocol.messages import Capabilities, MultiaddrStr, PeerIdStr, WireModel, message
from fedswarm.protocol.preprocessing import Preprocessing

JobId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
Hex32 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Address = Annotated[str, Field(pattern=r"^0x[0-9a-fA-F]{40}$")]
Url = Annotated[str, Field(min_length=8, max_length=4096, pattern=r"^https?://")]
Wei = Annotated[int, Field(ge=0, lt=1 << 128)]
EvmSignature = Annotated[str, Field(pattern=r"^0x[0-9a-fA-F]{130}$")]  # 65 bytes: r, s, v


@message("job_announce")
class JobAnnounce(WireModel):
    """A new job looking for trainers (market topic, from the job's client)."""

    job_id: JobId
    client_peer_id: PeerIdStr
    trainers: int = Field(ge=1, le=1024)
    standby: int = Field(ge=0, le=1024)
    rounds: int = Field(ge=1, le=10_000)
    price_cap_wei: Wei
    min_ram_mb: int = Field(default=0, ge=0)
    needs_gpu: bool = False
    model_params: int = Field(ge=1)
    train_rows: int = Field(ge=1)
    bid_deadline: float  # unix seconds: bids after this are ignored
    chain_id: int
    contract: Address
    audit_topic: Annotated[str, Field(pattern=r"^\d+\.\d+\.\d+$")]  # where trainers log their state
    # Where to send bids: a trainer that has not yet heard of this client (it learns peers
    # from the bootstrap's summary, once a heartbeat) can still dial it at once.
    client_addrs: list[MultiaddrStr] = Field(default_factory=list, max_length=16)
    # The job's operator on chain (the client node's wallet) and its signature over (job id,
    # client peer id, chain id, contract): a trainer works only if the chain names this address.
    operator: Address | None = None
    operator_sig: EvmSignature | None = None


@message("bid")
class Bid(WireModel):
    """A trainer's offer for a job (RPC trainer -> client). The wallet signature binds the
    peer id, box key, job and price to the EVM address (see ``market.bids``)."""

    job_id: JobId
    peer_id: PeerIdStr
    address: Address
    box_public: Hex32
    price_wei: Wei
    capabilities: Capabilities
    signature: Annotated[str, Field(pattern=r"^(0x)?[0-9a-fA-F]{130}$")]
    # The job operator's rejection rate this trainer saw on chain when it bid, and over how many
    # settled units (None: it knows no settled unit of that operator). Not signed and not used
    # by selection: it tells the job's owner how the market sees it (trainers refuse to bid for
    # operators above their limit, so a rate near it explains missing bids).
    client_rejection_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    client_units_judged: int | None = Field(default=None, ge=0, lt=1 << 63)


@message("bid_ack")
class BidAck(WireModel):
    job_id: JobId
    received: bool


class ChunkRef(WireModel):
    """One encrypted chunk a unit trains on."""

    chunk_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,128}$")]
    url: Url
    sha256: Hex32
    size: int = Field(ge=1, le=1 << 34)
    rows: int = Field(ge=1)
    sealed_key: Annotated[str, Field(max_length=256)]  # base64 SealedBox(chunk key) to the trainer


@message("work_unit")
class WorkUnit(WireModel):
    """One unit of work (RPC client -> trainer): everything needed to train and deliver."""

    job_id: JobId
    round: int = Field(ge=0, le=1_000_000)
    unit: int = Field(ge=0, le=1 << 31)
    model: dict[str, Any]  # fedswarm-seq/1 or fedswarm-graph/1 JSON (checked by the trainer)
    preprocessing: Preprocessing
    global_url: Url
    global_sha256: Hex32
    global_size: int = Field(ge=1, le=1 << 34)
    global_sealed_key: Annotated[str, Field(max_length=256)]
    chunks: list[ChunkRef] = Field(min_length=1, max_length=1024)
    epochs: int = Field(ge=1, le=100)
    batch_size: int = Field(ge=1, le=65_536)
    lr: float = Field(gt=0, le=10)
    seed: int = Field(ge=0, lt=1 << 63)
    fedprox_mu: float = Field(default=0.0, ge=0, le=100)
    mode: Literal["train", "noop"] = "train"
    deadline: float  # unix seconds: commit and notify before this
    put_url: Url
    put_max_bytes: int = Field(ge=1, le=1 << 34)
    client_box_public: Hex32
    audit_topic: Annotated[str, Field(pattern=r"^\d+\.\d+\.\d+$")]
    # Settlement v2: the on-chain job (key, contract, chain), who assigned the unit to whom, and
    # the operator's signature over the assignment (``market.operator.assignment_fields``).
    job_key: Hex32 | None = None
    contract: Address | None = None
    chain_id: int | None = Field(default=None, ge=1)
    operator: Address | None = None
    trainer: Address | None = None
    assignment_sig: EvmSignature | None = None


@message("unit_accepted")
class UnitAccepted(WireModel):
    """The trainer took the unit and works on it in the background."""

    job_id: JobId
    round: int
    unit: int


@message("unit_done")
class UnitDone(WireModel):
    """The trainer uploaded and committed its update (RPC trainer -> client)."""

    job_id: JobId
    round: int = Field(ge=0)
    unit: int = Field(ge=0)
    update_sha256: Hex32  # sha256 of the encrypted object, as committed on chain
    update_size: int = Field(ge=1)
    num_samples: int = Field(ge=0)
    train_loss: float | None = None
    seconds: float = Field(ge=0)  # the unit's compute: training, with loading its chunks (no transfers)
    commit_tx: Annotated[str, Field(max_length=80)] = ""


@message("unit_receipt")
class UnitReceipt(WireModel):
    """The operator's signed receipt for a delivered update (RPC reply to :class:`UnitDone`).

    The fields are the EIP-712 ``Receipt`` the contract's ``claim`` verifies
    (``ledger.receipts``): with it the trainer is paid even if the operator never settles.
    """

    job_id: JobId
    round: int = Field(ge=0, lt=1 << 32)
    unit: int = Field(ge=0, lt=1 << 32)
    job_key: Hex32
    trainer: Address
    update_sha256: Hex32
    issued_at: int = Field(ge=0, lt=1 << 64)
    signature: EvmSignature


@message("unit_refused")
class UnitRefused(WireModel):
    """The operator refuses a delivery (the unit was reassigned, or is unknown), signed.

    Not a receipt and not a reason to stop working for the job: the trainer keeps its update's
    key and moves on.
    """

    job_id: JobId
    round: int = Field(ge=0, lt=1 << 32)
    unit: int = Field(ge=0, lt=1 << 32)
    trainer: Address
    update_sha256: Hex32
    reason: Annotated[str, Field(pattern=r"^[a-z0-9-]{1,40}$")]  # a slug, e.g. "reassigned"
    signature: EvmSignature


@message("update_key")
class UpdateKey(WireModel):
    """The update's key, released only after the trainer holds a valid receipt (RPC trainer ->
    client): the fair exchange's second half. Sealed to the client's box key."""

    job_id: JobId
    round: int = Field(ge=0, lt=1 << 32)
    unit: int = Field(ge=0, lt=1 << 32)
    update_sha256: Hex32
    sealed_key: Annotated[str, Field(max_length=256)]


@message("unit_failed")
class UnitFailed(WireModel):
    """The trainer gives a unit back (download failed, worker crashed, deadline too close)."""

    job_id: JobId
    round: int = Field(ge=0)
    unit: int = Field(ge=0)
    reason: Annotated[str, Field(max_length=512)]


@message("ack")
class Ack(WireModel):
    ok: bool = True


@message("round_result")
class RoundResult(WireModel):
    """A settled round's summary (job topic, from the client)."""

    job_id: JobId
    round: int
    val_loss: float | None = None
    val_accuracy: float | None = None
    accepted: int = 0
    rejected: int = 0


@message("job_finished")
class JobFinished(WireModel):
    """The job is over (job topic and market topic): trainers may withdraw their pay."""

    job_id: JobId
    state: Literal["done", "failed", "cancelled"]
