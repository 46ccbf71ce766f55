// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

/// @title FedSwarmEscrowV2: escrow, operator verdicts and signed receipts for training jobs.
/// @notice A payer funds a job and names its operator (the client node) and its trainers with
/// their prices and unit budgets; the contract reserves each trainer's maximum pay. The operator
/// settles units in batches (accepted: paid; rejected: the reservation is freed). A trainer that
/// holds the operator's EIP-712 receipt for a unit claims it itself once the settle window has
/// passed, so it is paid whatever the operator does until the claim deadline. After that anyone
/// may release the job, which returns everything still held to the payer.
/// @dev Money is accounted per job (`escrow`, of which `reserved` is promised to trainers) and
/// per account (`pending`, pull payments); `address(this).balance` is never read (on Hedera
/// native transfers can bypass `receive`). Invariant: balance == sum(escrow) + sum(pending).
/// Amounts are in the chain's native unit as seen inside the EVM (wei on anvil, tinybar on
/// Hedera). Job keys are keccak256(abi.encode(payer, nonce)) and are never reused.
///
/// Timing of a job: `closeAt` starts as the deadline and becomes the completion (or
/// cancellation) time if that is earlier. Receipts issued after `closeAt` never pay. A receipt
/// is claimable from `issuedAt + settleWindow` until `closeAt + settleWindow + claimWindow`
/// (the release time); after the release time anyone may `release` the job.
contract FedSwarmEscrowV2 is EIP712, ReentrancyGuardTransient {
    enum JobStatus { None, Open, Completed, Cancelled, Released }
    enum UnitStatus { None, Accepted, Rejected, Claimed }
    enum SkipReason { None, AlreadyDone, BudgetUsed }

    /// @notice Terms of a job, fixed by the payer when funding.
    struct JobTerms {
        address operator;      // signs receipts, settles, completes
        uint64 deadline;       // latest closeAt (unix seconds)
        uint64 settleWindow;   // seconds the operator has to settle a receipt before its claim
        uint64 claimWindow;    // seconds claims stay open after closeAt + settleWindow
        uint128 priceCap;      // no trainer may be registered above this price per unit
        uint32 unitBudget;     // total units (all trainers, redo budget included)
    }

    /// @notice One trainer's registration: price per unit and how many units it may be paid.
    struct TrainerTerms {
        address trainer;
        uint128 price;
        uint32 units;
    }

    /// @notice The operator's judgement of one unit.
    struct Verdict {
        uint32 round;
        uint32 unit;
        address trainer;
        bytes32 updateHash;
        bool accepted;
        bytes32 reasonHash;    // why it was rejected (hash of the evidence); zero if accepted
    }

    /// @notice What the operator signs when it takes a trainer's update (EIP-712 typed data).
    struct Receipt {
        bytes32 jobKey;
        uint32 round;
        uint32 unit;
        address trainer;
        bytes32 updateHash;
        uint64 issuedAt;
    }

    /// @notice Everything the `job` view returns.
    struct JobView {
        address payer;
        address operator;
        JobStatus status;
        uint64 deadline;
        uint64 closeAt;
        uint64 settleWindow;
        uint64 claimWindow;
        uint64 releaseAt;      // closeAt + settleWindow + claimWindow
        uint128 priceCap;
        uint32 unitBudget;
        uint32 unitsRegistered;
        uint32 unitsDone;      // units settled or claimed
        uint256 escrow;        // held for this job: free + reserved
        uint256 free;          // not promised to anyone
        uint256 reserved;      // promised to registered trainers for units not yet done
    }

    struct Job {
        // slot 0
        address payer;
        uint64 deadline;
        JobStatus status;
        // slot 1
        address operator;
        uint64 closeAt;
        // slot 2
        uint64 settleWindow;
        uint64 claimWindow;
        uint128 priceCap;
        // slot 3
        uint32 unitBudget;
        uint32 unitsRegistered;
        uint32 unitsDone;
        // slots 4, 5
        uint256 escrow;
        uint256 reserved;
    }

    struct Registration {
        uint128 price;
        uint32 units;
        uint32 used;           // units settled or claimed (each consumes one unit of reservation)
        bool registered;
    }

    struct Unit {
        address trainer;
        UnitStatus status;
    }

    /// @notice Type hash of `Receipt` (EIP-712 `encodeType`).
    bytes32 public constant RECEIPT_TYPEHASH = keccak256(
        "Receipt(bytes32 jobKey,uint32 round,uint32 unit,address trainer,bytes32 updateHash,uint64 issuedAt)"
    );
    /// @notice The lowest `minClaimWindow` a deployment may choose (seconds).
    uint64 public constant CLAIM_WINDOW_FLOOR = 10;
    /// @notice Every job's claim window is at least this long (seconds; 1 hour in production,
    /// shorter on test chains, never below CLAIM_WINDOW_FLOOR).
    uint64 public immutable minClaimWindow;

    mapping(bytes32 => Job) private _jobs;
    mapping(bytes32 => mapping(address => Registration)) private _trainers;
    mapping(bytes32 => mapping(uint32 => mapping(uint32 => Unit))) private _units;
    mapping(bytes32 => bytes) private _resultPointers;
    mapping(bytes32 => bytes32) private _resultHashes;
    /// @notice Amount each account may withdraw.
    mapping(address => uint256) public pending;

    event JobFunded(
        bytes32 indexed jobKey, address indexed payer, address indexed operator, uint256 nonce,
        uint256 amount, uint64 deadline, uint64 settleWindow, uint64 claimWindow,
        uint128 priceCap, uint32 unitBudget
    );
    event TrainerAdded(bytes32 indexed jobKey, address indexed trainer, uint128 price, uint32 units);
    event UnitSettled(
        bytes32 indexed jobKey, uint32 round, uint32 unit, address indexed trainer,
        bytes32 updateHash, bool accepted, bytes32 reasonHash, uint256 amount
    );
    event UnitSkipped(bytes32 indexed jobKey, uint32 round, uint32 unit, address indexed trainer, SkipReason reason);
    event UnitClaimed(
        bytes32 indexed jobKey, uint32 round, uint32 unit, address indexed trainer,
        bytes32 updateHash, uint64 issuedAt, uint256 amount
    );
    event JobCompleted(bytes32 indexed jobKey, bytes resultPointer, bytes32 resultSha256, uint256 refund);
    event JobCancelled(bytes32 indexed jobKey, address indexed by, uint256 refund);
    event JobReleased(bytes32 indexed jobKey, address indexed by, uint256 refund);
    /// @notice Every credit to a payer's pending balance (completion, cancellation, release and
    /// rejections after the job closed).
    event Refunded(bytes32 indexed jobKey, address indexed payer, uint256 amount);
    event Withdrawn(address indexed account, uint256 amount);

    error ClaimWindowFloor(uint64 minClaimWindow, uint64 floor);
    error JobExists(bytes32 jobKey);
    error UnknownJob(bytes32 jobKey);
    error JobNotOpen(bytes32 jobKey, JobStatus status);
    error JobReleasedAlready(bytes32 jobKey);
    error NotOperator(bytes32 jobKey, address caller);
    error NotPayerOrOperator(bytes32 jobKey, address caller);
    error ZeroAddress();
    error ZeroAmount();
    error BadDeadline(uint64 deadline, uint256 nowTs);
    error ClaimWindowTooShort(uint64 claimWindow, uint64 minimum);
    error PriceAboveCap(address trainer, uint128 price, uint128 cap);
    error UnitBudgetExceeded(uint256 wanted, uint32 budget);
    error InvalidTrainer(address trainer);
    error AlreadyRegistered(address trainer);
    error InsufficientFunds(uint256 available, uint256 needed);
    error DeadlinePassed(uint64 deadline);
    error NotRegistered(address trainer);
    error ReceiptJobMismatch(bytes32 jobKey, bytes32 receiptJobKey);
    error NotReceiptTrainer(address caller, address trainer);
    error SignerNotOperator(address signer, address operator);
    error ReceiptAfterClose(uint64 issuedAt, uint64 closeAt);
    error SettleWindowOpen(uint256 claimableAt);
    error ClaimWindowOver(uint256 releaseAt);
    error UnitAlreadyDone(uint32 round, uint32 unit, UnitStatus status);
    error BudgetUsed(address trainer, uint32 units);
    error ReleaseTooEarly(uint256 releaseAt);
    error NothingToWithdraw();
    error TransferFailed();

    /// @param minClaimWindow_ every job's claim window must be at least this long (seconds);
    /// at least CLAIM_WINDOW_FLOOR.
    constructor(uint64 minClaimWindow_) EIP712("FedSwarmEscrow", "2") {
        if (minClaimWindow_ < CLAIM_WINDOW_FLOOR) revert ClaimWindowFloor(minClaimWindow_, CLAIM_WINDOW_FLOOR);
        minClaimWindow = minClaimWindow_;
    }

    // ---------------------------------------------------------------- payer

    /// @notice Fund a new job keyed by (msg.sender, nonce), register its first trainers and
    /// reserve their maximum pay. msg.value must cover the reservations; the rest is free escrow
    /// (for trainers added later, e.g. standbys). Returns the job key.
    function fund(uint256 nonce, JobTerms calldata terms, TrainerTerms[] calldata trainers)
        external payable nonReentrant returns (bytes32 jobKey)
    {
        jobKey = jobKeyOf(msg.sender, nonce);
        Job storage j = _jobs[jobKey];
        if (j.status != JobStatus.None) revert JobExists(jobKey);
        if (msg.value == 0) revert ZeroAmount();
        if (terms.operator == address(0)) revert ZeroAddress();
        if (terms.deadline <= block.timestamp) revert BadDeadline(terms.deadline, block.timestamp);
        if (terms.claimWindow < minClaimWindow) revert ClaimWindowTooShort(terms.claimWindow, minClaimWindow);
        j.payer = msg.sender;
        j.deadline = terms.deadline;
        j.status = JobStatus.Open;
        j.operator = terms.operator;
        j.closeAt = terms.deadline;
        j.settleWindow = terms.settleWindow;
        j.claimWindow = terms.claimWindow;
        j.priceCap = terms.priceCap;
        j.unitBudget = terms.unitBudget;
        j.escrow = msg.value;
        emit JobFunded(
            jobKey, msg.sender, terms.operator, nonce, msg.value, terms.deadline,
            terms.settleWindow, terms.claimWindow, terms.priceCap, terms.unitBudget
        );
        _register(j, jobKey, trainers);
    }

    /// @notice Register more trainers (standbys, replacements) from the job's free escrow, by the
    /// payer or the operator, within the payer's price cap and unit budget, before the deadline.
    function addTrainers(bytes32 jobKey, TrainerTerms[] calldata trainers) external nonReentrant {
        Job storage j = _open(jobKey);
        if (msg.sender != j.operator && msg.sender != j.payer) revert NotPayerOrOperator(jobKey, msg.sender);
        if (block.timestamp >= j.deadline) revert DeadlinePassed(j.deadline);
        _register(j, jobKey, trainers);
    }

    // ---------------------------------------------------------------- operator

    /// @notice Settle a batch of verdicts. Accepted: the trainer's price moves to its pending
    /// balance. Rejected: the unit's reservation is freed (refunded to the payer at once if the
    /// job is already closed). A unit already settled or claimed, or a trainer whose unit
    /// budget is used up, is skipped with `UnitSkipped`, so a claim racing the batch cannot
    /// make the batch revert.
    function settle(bytes32 jobKey, Verdict[] calldata verdicts) external nonReentrant {
        Job storage j = _jobs[jobKey];
        if (j.status == JobStatus.None) revert UnknownJob(jobKey);
        if (j.status == JobStatus.Released) revert JobReleasedAlready(jobKey);
        if (msg.sender != j.operator) revert NotOperator(jobKey, msg.sender);
        bool open = j.status == JobStatus.Open;
        uint256 paid;
        uint256 freed;
        uint32 done;
        for (uint256 i = 0; i < verdicts.length; i++) {
            Verdict calldata v = verdicts[i];
            Registration storage t = _trainers[jobKey][v.trainer];
            if (!t.registered) revert NotRegistered(v.trainer);
            Unit storage u = _units[jobKey][v.round][v.unit];
            if (u.status != UnitStatus.None) {
                emit UnitSkipped(jobKey, v.round, v.unit, v.trainer, SkipReason.AlreadyDone);
                continue;
            }
            if (t.used >= t.units) {
                emit UnitSkipped(jobKey, v.round, v.unit, v.trainer, SkipReason.BudgetUsed);
                continue;
            }
            t.used += 1;
            done += 1;
            uint256 price = t.price;
            u.trainer = v.trainer;
            if (v.accepted) {
                u.status = UnitStatus.Accepted;
                pending[v.trainer] += price;
                paid += price;
                emit UnitSettled(jobKey, v.round, v.unit, v.trainer, v.updateHash, true, v.reasonHash, price);
            } else {
                u.status = UnitStatus.Rejected;
                freed += price;
                emit UnitSettled(jobKey, v.round, v.unit, v.trainer, v.updateHash, false, v.reasonHash, 0);
            }
        }
        // Totals once per batch: two storage writes instead of two per verdict.
        j.unitsDone += done;
        j.reserved -= paid + freed;
        j.escrow -= paid;
        if (!open && freed > 0) _refund(j, jobKey, freed);
    }

    /// @notice Close the job with its (encrypted) result pointer and the result's sha256; the
    /// free escrow goes back to the payer now, the reservations at release.
    function complete(bytes32 jobKey, bytes calldata resultPointer, bytes32 resultSha256) external nonReentrant {
        Job storage j = _open(jobKey);
        if (msg.sender != j.operator) revert NotOperator(jobKey, msg.sender);
        j.status = JobStatus.Completed;
        if (block.timestamp < j.closeAt) j.closeAt = uint64(block.timestamp);
        _resultPointers[jobKey] = resultPointer;
        _resultHashes[jobKey] = resultSha256;
        uint256 refund = j.escrow - j.reserved;
        if (refund > 0) _refund(j, jobKey, refund);
        emit JobCompleted(jobKey, resultPointer, resultSha256, refund);
    }

    /// @notice Stop a job early, by its payer or its operator (a job that failed). It closes now:
    /// receipts issued later never pay, units already paid stay paid, the free escrow goes back
    /// to the payer at once, and the reservations at release (after the settle and claim
    /// windows), because trainers may hold receipts the chain has not seen yet. Settling the
    /// remaining units (rejections refund at once) lets the operator return money sooner.
    function cancel(bytes32 jobKey) external nonReentrant {
        Job storage j = _open(jobKey);
        if (msg.sender != j.operator && msg.sender != j.payer) revert NotPayerOrOperator(jobKey, msg.sender);
        j.status = JobStatus.Cancelled;
        if (block.timestamp < j.closeAt) j.closeAt = uint64(block.timestamp);
        uint256 refund = j.escrow - j.reserved;
        if (refund > 0) _refund(j, jobKey, refund);
        emit JobCancelled(jobKey, msg.sender, refund);
    }

    // ---------------------------------------------------------------- trainer

    /// @notice Claim a unit with the operator's signed receipt, once `issuedAt + settleWindow`
    /// has passed and until the job's release time, if the operator has not settled it.
    function claim(bytes32 jobKey, Receipt calldata receipt, bytes calldata signature) external nonReentrant {
        if (receipt.jobKey != jobKey) revert ReceiptJobMismatch(jobKey, receipt.jobKey);
        Job storage j = _jobs[jobKey];
        if (j.status == JobStatus.None) revert UnknownJob(jobKey);
        if (j.status == JobStatus.Released) revert JobReleasedAlready(jobKey);
        if (msg.sender != receipt.trainer) revert NotReceiptTrainer(msg.sender, receipt.trainer);
        // Rejects malformed and high-s (malleable) signatures.
        address signer = ECDSA.recoverCalldata(receiptDigest(receipt), signature);
        if (signer != j.operator) revert SignerNotOperator(signer, j.operator);
        if (receipt.issuedAt > j.closeAt) revert ReceiptAfterClose(receipt.issuedAt, j.closeAt);
        uint256 claimableAt = uint256(receipt.issuedAt) + j.settleWindow;
        if (block.timestamp < claimableAt) revert SettleWindowOpen(claimableAt);
        uint256 releaseAt = _releaseAt(j);
        if (block.timestamp > releaseAt) revert ClaimWindowOver(releaseAt);
        Registration storage t = _trainers[jobKey][receipt.trainer];
        if (!t.registered) revert NotRegistered(receipt.trainer);
        Unit storage u = _units[jobKey][receipt.round][receipt.unit];
        if (u.status != UnitStatus.None) revert UnitAlreadyDone(receipt.round, receipt.unit, u.status);
        if (t.used >= t.units) revert BudgetUsed(receipt.trainer, t.units);
        t.used += 1;
        j.unitsDone += 1;
        u.trainer = receipt.trainer;
        u.status = UnitStatus.Claimed;
        uint256 price = t.price;
        j.reserved -= price;
        j.escrow -= price;
        pending[receipt.trainer] += price;
        emit UnitClaimed(jobKey, receipt.round, receipt.unit, receipt.trainer, receipt.updateHash, receipt.issuedAt, price);
    }

    /// @notice Move the caller's whole pending balance to its wallet (pull payment).
    function withdraw() external nonReentrant {
        uint256 amount = pending[msg.sender];
        if (amount == 0) revert NothingToWithdraw();
        pending[msg.sender] = 0; // effects before the interaction
        emit Withdrawn(msg.sender, amount);
        (bool ok, ) = payable(msg.sender).call{value: amount}("");
        if (!ok) revert TransferFailed();
    }

    // ---------------------------------------------------------------- anyone

    /// @notice After the release time, return everything the job still holds to its payer,
    /// whether or not the operator ever completed it. Callable by anyone.
    function release(bytes32 jobKey) external nonReentrant {
        Job storage j = _jobs[jobKey];
        if (j.status == JobStatus.None) revert UnknownJob(jobKey);
        if (j.status == JobStatus.Released) revert JobReleasedAlready(jobKey);
        uint256 releaseAt = _releaseAt(j);
        if (block.timestamp <= releaseAt) revert ReleaseTooEarly(releaseAt);
        j.status = JobStatus.Released;
        j.reserved = 0;
        uint256 refund = j.escrow;
        if (refund > 0) _refund(j, jobKey, refund);
        emit JobReleased(jobKey, msg.sender, refund);
    }

    // ---------------------------------------------------------------- views

    /// @notice The key of the job `payer` funds with `nonce`.
    function jobKeyOf(address payer, uint256 nonce) public pure returns (bytes32) {
        return keccak256(abi.encode(payer, nonce));
    }

    /// @notice The EIP-712 digest the operator signs for `receipt` (domain: name
    /// "FedSwarmEscrow", version "2", this chain id, this contract).
    function receiptDigest(Receipt calldata receipt) public view returns (bytes32) {
        return _hashTypedDataV4(keccak256(abi.encode(
            RECEIPT_TYPEHASH, receipt.jobKey, receipt.round, receipt.unit, receipt.trainer,
            receipt.updateHash, receipt.issuedAt
        )));
    }

    /// @notice A job's parties, status, timing and money (status None if it does not exist).
    function job(bytes32 jobKey) external view returns (JobView memory v) {
        Job storage j = _jobs[jobKey];
        v.payer = j.payer;
        v.operator = j.operator;
        v.status = j.status;
        v.deadline = j.deadline;
        v.closeAt = j.closeAt;
        v.settleWindow = j.settleWindow;
        v.claimWindow = j.claimWindow;
        v.releaseAt = j.status == JobStatus.None ? 0 : uint64(_releaseAt(j));
        v.priceCap = j.priceCap;
        v.unitBudget = j.unitBudget;
        v.unitsRegistered = j.unitsRegistered;
        v.unitsDone = j.unitsDone;
        v.escrow = j.escrow;
        v.reserved = j.reserved;
        v.free = j.escrow - j.reserved;
    }

    /// @notice A trainer's registration for a job: price, units, units used, registered.
    function trainer(bytes32 jobKey, address account) external view returns (Registration memory) {
        return _trainers[jobKey][account];
    }

    /// @notice Who did a unit and how it ended (status None: neither settled nor claimed).
    function unitState(bytes32 jobKey, uint32 round, uint32 unit) external view returns (Unit memory) {
        return _units[jobKey][round][unit];
    }

    /// @notice The result recorded by `complete` (empty before).
    function result(bytes32 jobKey) external view returns (bytes memory pointer, bytes32 sha256Hash) {
        return (_resultPointers[jobKey], _resultHashes[jobKey]);
    }

    // ---------------------------------------------------------------- internals

    function _open(bytes32 jobKey) private view returns (Job storage j) {
        j = _jobs[jobKey];
        if (j.status == JobStatus.None) revert UnknownJob(jobKey);
        if (j.status != JobStatus.Open) revert JobNotOpen(jobKey, j.status);
    }

    function _releaseAt(Job storage j) private view returns (uint256) {
        return uint256(j.closeAt) + j.settleWindow + j.claimWindow;
    }

    /// @dev Register `trainers`, reserving price * units each from the job's free escrow.
    function _register(Job storage j, bytes32 jobKey, TrainerTerms[] calldata trainers) private {
        uint256 need;
        uint256 units = j.unitsRegistered;
        uint128 cap = j.priceCap;
        for (uint256 i = 0; i < trainers.length; i++) {
            TrainerTerms calldata tt = trainers[i];
            if (tt.trainer == address(0) || tt.units == 0) revert InvalidTrainer(tt.trainer);
            if (tt.price > cap) revert PriceAboveCap(tt.trainer, tt.price, cap);
            Registration storage t = _trainers[jobKey][tt.trainer];
            if (t.registered) revert AlreadyRegistered(tt.trainer);
            t.registered = true;
            t.price = tt.price;
            t.units = tt.units;
            units += tt.units;
            need += uint256(tt.price) * tt.units;
            emit TrainerAdded(jobKey, tt.trainer, tt.price, tt.units);
        }
        if (units > j.unitBudget) revert UnitBudgetExceeded(units, j.unitBudget);
        uint256 free = j.escrow - j.reserved;
        if (need > free) revert InsufficientFunds(free, need);
        j.unitsRegistered = uint32(units);
        j.reserved += need;
    }

    /// @dev Move `amount` of the job's escrow to its payer's pending balance.
    function _refund(Job storage j, bytes32 jobKey, uint256 amount) private {
        j.escrow -= amount;
        pending[j.payer] += amount;
        emit Refunded(jobKey, j.payer, amount);
    }
}
