"""EIP-712 receipts: one shared vector (Python, a hand-rolled encoding, the contract), signature
malleability, and replay across jobs, trainers, chains and contracts."""

from __future__ import annotations

import pytest
from _escrow_v2_chain import ETH, PRICE, V2Chain, revert_reason
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_keys import keys
from eth_utils import keccak

from fedswarm.ledger.escrow_types import TrainerTerms
from fedswarm.ledger.receipts import (
    RECEIPT_TYPEHASH,
    EscrowDomain,
    Receipt,
    ReceiptError,
    malleable_twin,
    receipt_digest,
    recover_signer,
    sign_receipt,
    verify_receipt,
)

SETTLE = 50

# The shared vector. The domain is the devnet's v2 deployment (anvil chain 31337, the deployer's
# second contract), so tests/ledger/test_escrow_v2_anvil.py checks the very same digest against
# the deployed contract's receiptDigest.
VECTOR_KEY = keccak(text="fedswarm receipt vector operator")
VECTOR_OPERATOR = "0xd05d6A0efd97c401168B4805A2A0AC3b8cd62CC3"
VECTOR_DOMAIN = EscrowDomain(31337, "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512")
VECTOR_RECEIPT = Receipt(keccak(text="job"), 3, 17, "0x" + "ab" * 20, keccak(text="update"), 1767225600)
VECTOR_DIGEST = "7a2dc1fdde08ab488e4c0057a406e3bb08b262ad41753d1b0409be2128c6e050"
VECTOR_SIGNATURE = (
    "424aa29f5c16a74257898ea7006361e343dff4b0d177a6892a02ce04272f4de6"
    "029f94b64bb7e83d7ed97b2c2d4b9ab4ef45ef853efc01fabac4f63640929c181c"
)


def hand_digest(r: Receipt, d: EscrowDomain) -> bytes:
    """EIP-712 written out by hand, independent of eth-account."""
    domain_type = keccak(text="EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)")
    separator = keccak(abi_encode(
        ["bytes32", "bytes32", "bytes32", "uint256", "address"],
        [domain_type, keccak(text="FedSwarmEscrow"), keccak(text="2"), d.chain_id, d.contract],
    ))
    struct = keccak(abi_encode(
        ["bytes32", "bytes32", "uint32", "uint32", "address", "bytes32", "uint64"],
        [RECEIPT_TYPEHASH, r.job_key, r.round, r.unit, r.trainer, r.update_hash, r.issued_at],
    ))
    return keccak(b"\x19\x01" + separator + struct)


def test_shared_vector_in_python():
    assert Account.from_key(VECTOR_KEY).address == VECTOR_OPERATOR
    assert receipt_digest(VECTOR_RECEIPT, VECTOR_DOMAIN).hex() == VECTOR_DIGEST
    assert hand_digest(VECTOR_RECEIPT, VECTOR_DOMAIN).hex() == VECTOR_DIGEST
    sig = sign_receipt(VECTOR_RECEIPT, VECTOR_DOMAIN, Account.from_key(VECTOR_KEY))
    assert sig.hex() == VECTOR_SIGNATURE  # RFC 6979: deterministic
    assert recover_signer(VECTOR_RECEIPT, VECTOR_DOMAIN, sig) == VECTOR_OPERATOR
    verify_receipt(VECTOR_RECEIPT, VECTOR_DOMAIN, sig, VECTOR_OPERATOR.lower())
    with pytest.raises(ReceiptError, match="not by the job's operator"):
        verify_receipt(VECTOR_RECEIPT, VECTOR_DOMAIN, sig, "0x" + "11" * 20)


def test_receipt_json_and_validation():
    assert Receipt.from_json(VECTOR_RECEIPT.to_json()) == VECTOR_RECEIPT
    good = VECTOR_RECEIPT.to_json()
    for field, bad in [("job_key", "0x1234"), ("update_hash", "zz"), ("round", -1), ("unit", 2**32),
                       ("issued_at", 2**64), ("trainer", "0xnothex"), ("round", True), ("job_key", 5)]:
        with pytest.raises(ReceiptError):
            Receipt.from_json({**good, field: bad})
    with pytest.raises(ReceiptError, match="malformed"):
        Receipt.from_json({"round": 1})


@pytest.fixture(scope="module")
def base() -> V2Chain:
    return V2Chain()


@pytest.fixture
def chain(base: V2Chain):
    snap = base.tester.take_snapshot()
    yield base
    base.tester.revert_to_snapshot(snap)


@pytest.fixture
def job(chain: V2Chain):
    """(key, payer, operator, t1, t2): t1 and t2 registered for 2 units at PRICE."""
    payer, op, t1, t2 = chain.accounts[1:5]
    trainers = [TrainerTerms(t1, PRICE, 2), TrainerTerms(t2, PRICE, 2)]
    key = chain.fund(payer, 1, chain.terms(op, settle=SETTLE), trainers, ETH)
    return key, payer, op, t1, t2


def test_contract_digest_matches_python(chain, job):
    key, _, op, t1, _ = job
    assert chain.fn().RECEIPT_TYPEHASH().call() == RECEIPT_TYPEHASH
    r = chain.receipt(key, 4, 9, t1)
    on_chain = chain.fn().receiptDigest(r.as_tuple()).call()
    assert on_chain == receipt_digest(r, chain.domain()) == hand_digest(r, chain.domain())
    # The vector's receipt too (another domain, so another digest, but the same encoding).
    assert chain.fn().receiptDigest(VECTOR_RECEIPT.as_tuple()).call() == hand_digest(VECTOR_RECEIPT, chain.domain())


def test_high_s_twin_is_refused(chain, job):
    key, _, op, t1, _ = job
    r = chain.receipt(key, 0, 0, t1)
    sig = chain.sign(r, op)
    twin = malleable_twin(sig)
    # The twin is a valid ECDSA signature of the same digest (raw ecrecover accepts it)...
    digest = receipt_digest(r, chain.domain())
    vrs = keys.Signature(vrs=(twin[64] - 27, int.from_bytes(twin[:32], "big"), int.from_bytes(twin[32:64], "big")))
    assert vrs.recover_public_key_from_msg_hash(digest).to_checksum_address() == op
    # ...but OpenZeppelin's ECDSA and our verifier refuse it.
    chain.tester.time_travel(r.issued_at + SETTLE)
    s = "0x" + twin[32:64].hex()
    assert revert_reason(lambda: chain.claim(r, twin)) == f"ECDSAInvalidSignatureS(s={s})"
    with pytest.raises(ReceiptError, match="high s"):
        recover_signer(r, chain.domain(), twin)
    assert revert_reason(lambda: chain.claim(r, sig[:64])) == "ECDSAInvalidSignatureLength(length=64)"
    assert revert_reason(lambda: chain.claim(r, sig + b"\0")) == "ECDSAInvalidSignatureLength(length=66)"
    assert revert_reason(lambda: chain.claim(r, sig[:64] + bytes([29]))) == "ECDSAInvalidSignature()"
    with pytest.raises(ReceiptError, match="v=29"):
        recover_signer(r, chain.domain(), sig[:64] + bytes([29]))
    chain.claim(r, sig)
    assert chain.pending(t1) == PRICE


def test_replay_on_another_job(chain, job):
    key, payer, op, t1, _ = job
    other = chain.fund(payer, 2, chain.terms(op, settle=SETTLE), [TrainerTerms(t1, PRICE, 2)], ETH)
    r = chain.receipt(key, 0, 0, t1)
    sig = chain.sign(r, op)
    chain.tester.time_travel(r.issued_at + SETTLE)
    assert revert_reason(lambda: chain.claim(r, sig, job_key=other)).startswith("ReceiptJobMismatch")
    moved = Receipt(other, r.round, r.unit, r.trainer, r.update_hash, r.issued_at)
    assert revert_reason(lambda: chain.claim(moved, sig)).startswith("SignerNotOperator")
    chain.claim(r, sig)
    assert chain.pending(t1) == PRICE and chain.job(other).units_done == 0


def test_replay_by_another_trainer(chain, job):
    key, _, op, t1, t2 = job
    r = chain.receipt(key, 0, 0, t1)
    sig = chain.sign(r, op)
    chain.tester.time_travel(r.issued_at + SETTLE)
    assert revert_reason(lambda: chain.claim(r, sig, sender=t2)).startswith("NotReceiptTrainer")
    stolen = Receipt(key, r.round, r.unit, t2, r.update_hash, r.issued_at)
    assert revert_reason(lambda: chain.claim(stolen, sig)).startswith("SignerNotOperator")
    # Another field changed (a later date to dodge closeAt, another unit): not the signed receipt.
    for changed in (Receipt(key, 0, 1, t1, r.update_hash, r.issued_at),
                    Receipt(key, 0, 0, t1, keccak(text="x"), r.issued_at),
                    Receipt(key, 0, 0, t1, r.update_hash, r.issued_at - 1)):
        assert revert_reason(lambda c=changed: chain.claim(c, sig)).startswith("SignerNotOperator")
    assert chain.pending(t2) == 0 and chain.pending(t1) == 0


def test_replay_from_another_chain(chain, job):
    key, _, op, t1, _ = job
    r = chain.receipt(key, 0, 0, t1)
    foreign = chain.sign(r, op, domain=chain.domain(chain_id=296))  # signed for Hedera testnet
    chain.tester.time_travel(r.issued_at + SETTLE)
    assert revert_reason(lambda: chain.claim(r, foreign)).startswith("SignerNotOperator")
    assert chain.pending(t1) == 0


def test_replay_on_another_contract(chain, job):
    key, payer, op, t1, _ = job
    # A second deployment where the same payer funds the same nonce: the same job key.
    twin = chain.deploy(chain.artifact, 100)
    terms = chain.terms(op, settle=SETTLE)
    chain.tx(twin.functions.fund(1, terms.as_tuple(), [TrainerTerms(t1, PRICE, 2).as_tuple()]), payer, ETH)
    assert twin.functions.job(key).call()[2] == 1  # open, same key
    r = chain.receipt(key, 0, 0, t1)
    sig = chain.sign(r, op)  # for the first contract
    chain.tester.time_travel(r.issued_at + SETTLE)
    reason = revert_lambda_on(chain, twin.functions.claim(key, r.as_tuple(), sig), t1)
    assert reason.startswith("SignerNotOperator")
    chain.claim(r, sig)
    assert chain.pending(t1) == PRICE and twin.functions.pending(t1).call() == 0


def revert_lambda_on(chain: V2Chain, call, sender: str) -> str:
    return revert_reason(lambda: chain.tx(call, sender))
