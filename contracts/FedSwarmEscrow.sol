// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

/// @title FedSwarmEscrow: escrow and pull payments for federated training jobs.
/// @notice A job owner funds a job, registers trainers (reserving their maximum pay), and
/// settles each committed unit of work. Trainers are paid only for units they committed and
/// the owner accepted, or that the owner left unsettled past the settle window.
/// @dev Money is accounted per job (`Job.escrow`) and per account (`pending`); the contract
/// never reads `address(this).balance` (on Hedera native transfers can bypass `receive`).
/// Invariant: balance == sum(job.escrow) + sum(pending). Amounts are in the chain's native
/// unit as seen inside the EVM (wei on anvil, tinybar on Hedera).
contract FedSwarmEscrow {
    enum JobStatus { None, Open, Completed, Cancelled }
    enum UnitStatus { None, Committed, Accepted, Rejected, Claimed }

    struct Job {
        address owner;
        uint64 deadline;        // commits are accepted while block.timestamp < deadline
        JobStatus status;
        uint64 settleWindow;    // seconds after a commit before the trainer may claim it
        uint32 commits;         // number of units committed so far (cancel needs zero)
        bytes32 specHash;
        uint256 escrow;         // funds this job still holds
        uint256 reserved;       // part of escrow promised to trainers (max pay not yet settled)
        uint256 outstanding;    // part of reserved owed to committed, unsettled units
    }

    struct Trainer {
        uint128 pricePerUnit;
        uint32 maxUnits;
        uint32 committed;
        bool registered;
    }

    struct Unit {
        address trainer;
        uint64 committedAt;
        UnitStatus status;
        bytes32 updateHash;
        bytes32 reasonHash;
    }

    mapping(bytes32 => Job) private _jobs;
    mapping(bytes32 => mapping(address => Trainer)) private _trainers;
    mapping(bytes32 => mapping(uint32 => mapping(uint32 => Unit))) private _units;
    mapping(bytes32 => bytes) private _resultPointers;
    /// @notice Amount each account may withdraw.
    mapping(address => uint256) public pending;

    bool private transient _locked; // reentrancy guard (EIP-1153, cancun)

    event JobCreated(bytes32 indexed jobId, address indexed owner, uint256 amount, bytes32 specHash, uint64 deadline, uint64 settleWindow);
    event TrainerAdded(bytes32 indexed jobId, address indexed trainer, uint256 pricePerUnit, uint32 maxUnits);
    event UnitCommitted(bytes32 indexed jobId, uint32 round, uint32 unit, address indexed trainer, bytes32 updateHash);
    event UnitSettled(bytes32 indexed jobId, uint32 round, uint32 unit, address indexed trainer, bool accepted, uint256 amount, bytes32 reasonHash);
    event UnitClaimed(bytes32 indexed jobId, uint32 round, uint32 unit, address indexed trainer, uint256 amount);
    event JobCompleted(bytes32 indexed jobId, bytes resultPointer, uint256 refund);
    event JobCancelled(bytes32 indexed jobId, uint256 refund);
    event Credited(address indexed account, bytes32 indexed jobId, uint256 amount);
    event Withdrawn(address indexed account, uint256 amount);

    error JobExists(bytes32 jobId);
    error UnknownJob(bytes32 jobId);
    error JobNotOpen(bytes32 jobId);
    error NotJobOwner(bytes32 jobId, address caller);
    error BadDeadline(uint64 deadline, uint256 nowTs);
    error LengthMismatch();
    error ZeroAmount();
    error AlreadyRegistered(address trainer);
    error InvalidTrainer(address trainer);
    error InsufficientFunds(uint256 available, uint256 needed);
    error NotRegistered(address caller);
    error DeadlinePassed(uint64 deadline);
    error MaxUnitsReached(uint32 maxUnits);
    error AlreadyCommitted(uint32 round, uint32 unit);
    error NotCommitted(uint32 round, uint32 unit);
    error AlreadySettled(uint32 round, uint32 unit);
    error NotCommitter(address caller);
    error SettleWindowOpen(uint256 claimableAt);
    error HasCommits(uint32 commits);
    error NothingToWithdraw();
    error TransferFailed();
    error Reentrancy();

    modifier nonReentrant() {
        if (_locked) revert Reentrancy();
        _locked = true;
        _;
        _locked = false;
    }

    // ---------------------------------------------------------------- owner actions

    /// @notice Open a job funded with msg.value; the caller becomes its owner.
    function createJob(bytes32 jobId, bytes32 specHash, uint64 deadline, uint64 settleWindow) external payable {
        if (jobId == bytes32(0) || _jobs[jobId].status != JobStatus.None) revert JobExists(jobId);
        if (deadline <= block.timestamp) revert BadDeadline(deadline, block.timestamp);
        if (msg.value == 0) revert ZeroAmount();
        Job storage j = _jobs[jobId];
        j.owner = msg.sender;
        j.deadline = deadline;
        j.settleWindow = settleWindow;
        j.status = JobStatus.Open;
        j.specHash = specHash;
        j.escrow = msg.value;
        emit JobCreated(jobId, msg.sender, msg.value, specHash, deadline, settleWindow);
    }

    /// @notice Register trainers and reserve price * maxUnits for each from the job's free funds.
    function addTrainers(bytes32 jobId, address[] calldata trainers, uint128[] calldata pricePerUnit, uint32[] calldata maxUnits) external {
        Job storage j = _ownedOpenJob(jobId);
        if (trainers.length != pricePerUnit.length || trainers.length != maxUnits.length) revert LengthMismatch();
        uint256 need;
        for (uint256 i = 0; i < trainers.length; i++) {
            Trainer storage t = _trainers[jobId][trainers[i]];
            if (t.registered) revert AlreadyRegistered(trainers[i]);
            if (maxUnits[i] == 0 || trainers[i] == address(0)) revert InvalidTrainer(trainers[i]);
            t.registered = true;
            t.pricePerUnit = pricePerUnit[i];
            t.maxUnits = maxUnits[i];
            need += uint256(pricePerUnit[i]) * maxUnits[i];
            emit TrainerAdded(jobId, trainers[i], pricePerUnit[i], maxUnits[i]);
        }
        uint256 free = j.escrow - j.reserved;
        if (need > free) revert InsufficientFunds(free, need);
        j.reserved += need;
    }

    /// @notice Accept or reject committed units. Accepted units credit their trainer; rejected
    /// ones release the reservation (back to the owner if the job is already closed).
    function settle(bytes32 jobId, uint32 round, uint32[] calldata units, bool[] calldata accepted, bytes32[] calldata reasonHashes) external {
        Job storage j = _jobs[jobId];
        if (j.status == JobStatus.None) revert UnknownJob(jobId);
        if (j.owner != msg.sender) revert NotJobOwner(jobId, msg.sender);
        if (units.length != accepted.length || units.length != reasonHashes.length) revert LengthMismatch();
        for (uint256 i = 0; i < units.length; i++) {
            Unit storage u = _committedUnit(jobId, round, units[i]);
            uint256 price = _trainers[jobId][u.trainer].pricePerUnit;
            j.reserved -= price;
            j.outstanding -= price;
            if (accepted[i]) {
                u.status = UnitStatus.Accepted;
                _pay(j, jobId, u.trainer, price);
            } else {
                u.status = UnitStatus.Rejected;
                u.reasonHash = reasonHashes[i];
                // An open job keeps the released funds as free escrow; a closed one refunds them.
                if (j.status != JobStatus.Open) _pay(j, jobId, j.owner, price);
            }
            emit UnitSettled(jobId, round, units[i], u.trainer, accepted[i], accepted[i] ? price : 0, u.reasonHash);
        }
    }

    /// @notice Close the job, record the (encrypted) result pointer and refund everything not
    /// owed to committed, unsettled units to the owner's pending balance.
    function completeJob(bytes32 jobId, bytes calldata pointer) external {
        Job storage j = _ownedOpenJob(jobId);
        j.status = JobStatus.Completed;
        _resultPointers[jobId] = pointer;
        // Reservations of units never committed are released; only commits still need money.
        uint256 refund = j.escrow - j.outstanding;
        j.reserved = j.outstanding;
        if (refund > 0) _pay(j, jobId, j.owner, refund);
        emit JobCompleted(jobId, pointer, refund);
    }

    /// @notice Cancel a job nobody has committed work to yet; the whole escrow is refunded.
    function cancelJob(bytes32 jobId) external {
        Job storage j = _ownedOpenJob(jobId);
        if (j.commits != 0) revert HasCommits(j.commits);
        j.status = JobStatus.Cancelled;
        uint256 refund = j.escrow;
        j.reserved = 0;
        _pay(j, jobId, j.owner, refund);
        emit JobCancelled(jobId, refund);
    }

    // ---------------------------------------------------------------- trainer actions

    /// @notice Commit the hash of an update for (round, unit), bound to the sender.
    function commitUnit(bytes32 jobId, uint32 round, uint32 unit, bytes32 updateHash) external {
        Job storage j = _jobs[jobId];
        if (j.status == JobStatus.None) revert UnknownJob(jobId);
        if (j.status != JobStatus.Open) revert JobNotOpen(jobId);
        if (block.timestamp >= j.deadline) revert DeadlinePassed(j.deadline);
        Trainer storage t = _trainers[jobId][msg.sender];
        if (!t.registered) revert NotRegistered(msg.sender);
        if (t.committed >= t.maxUnits) revert MaxUnitsReached(t.maxUnits);
        Unit storage u = _units[jobId][round][unit];
        if (u.status != UnitStatus.None) revert AlreadyCommitted(round, unit);
        t.committed += 1;
        j.commits += 1;
        j.outstanding += t.pricePerUnit;
        u.trainer = msg.sender;
        u.committedAt = uint64(block.timestamp);
        u.status = UnitStatus.Committed;
        u.updateHash = updateHash;
        emit UnitCommitted(jobId, round, unit, msg.sender, updateHash);
    }

    /// @notice The committing trainer is paid for a unit the owner left unsettled past the window.
    function claimUnsettled(bytes32 jobId, uint32 round, uint32 unit) external {
        Job storage j = _jobs[jobId];
        if (j.status == JobStatus.None) revert UnknownJob(jobId);
        Unit storage u = _committedUnit(jobId, round, unit);
        if (u.trainer != msg.sender) revert NotCommitter(msg.sender);
        uint256 claimableAt = uint256(u.committedAt) + j.settleWindow;
        if (block.timestamp < claimableAt) revert SettleWindowOpen(claimableAt);
        uint256 price = _trainers[jobId][msg.sender].pricePerUnit;
        u.status = UnitStatus.Claimed;
        j.reserved -= price;
        j.outstanding -= price;
        _pay(j, jobId, msg.sender, price);
        emit UnitClaimed(jobId, round, unit, msg.sender, price);
    }

    /// @notice Send the caller everything credited to it (pull payment).
    function withdraw() external nonReentrant {
        uint256 amount = pending[msg.sender];
        if (amount == 0) revert NothingToWithdraw();
        pending[msg.sender] = 0; // effects before the interaction
        emit Withdrawn(msg.sender, amount);
        (bool ok, ) = payable(msg.sender).call{value: amount}("");
        if (!ok) revert TransferFailed();
    }

    // ---------------------------------------------------------------- views

    /// @notice A job's terms and money: owner, specHash, deadline, settleWindow, status,
    /// commits, escrow, reserved, outstanding.
    function job(bytes32 jobId) external view returns (Job memory) {
        return _jobs[jobId];
    }

    /// @notice A trainer's terms for a job.
    function trainer(bytes32 jobId, address account) external view returns (Trainer memory) {
        return _trainers[jobId][account];
    }

    /// @notice The state of one unit of work.
    function unitState(bytes32 jobId, uint32 round, uint32 unit) external view returns (Unit memory) {
        return _units[jobId][round][unit];
    }

    /// @notice The encrypted result pointer recorded by completeJob (empty before).
    function resultPointer(bytes32 jobId) external view returns (bytes memory) {
        return _resultPointers[jobId];
    }

    // ---------------------------------------------------------------- internals

    function _ownedOpenJob(bytes32 jobId) private view returns (Job storage j) {
        j = _jobs[jobId];
        if (j.status == JobStatus.None) revert UnknownJob(jobId);
        if (j.owner != msg.sender) revert NotJobOwner(jobId, msg.sender);
        if (j.status != JobStatus.Open) revert JobNotOpen(jobId);
    }

    function _committedUnit(bytes32 jobId, uint32 round, uint32 unit) private view returns (Unit storage u) {
        u = _units[jobId][round][unit];
        if (u.status == UnitStatus.None) revert NotCommitted(round, unit);
        if (u.status != UnitStatus.Committed) revert AlreadySettled(round, unit);
    }

    /// @dev Move `amount` from the job's escrow to `to`'s pending balance.
    function _pay(Job storage j, bytes32 jobId, address to, uint256 amount) private {
        j.escrow -= amount;
        pending[to] += amount;
        emit Credited(to, jobId, amount);
    }
}
