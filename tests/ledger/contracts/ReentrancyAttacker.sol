// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

interface IFedSwarmEscrow {
    function createJob(bytes32 jobId, bytes32 specHash, uint64 deadline, uint64 settleWindow) external payable;
    function cancelJob(bytes32 jobId) external;
    function withdraw() external;
}

/// Test helper: owns a job, cancels it for a refund, and tries to re-enter withdraw() from
/// its receive hook (or refuses the payment altogether when `refuse` is set).
contract ReentrancyAttacker {
    IFedSwarmEscrow public immutable escrow;
    uint256 public received;
    bool public reentered;
    bytes public lastError;
    bool public refuse;

    constructor(address escrow_) {
        escrow = IFedSwarmEscrow(escrow_);
    }

    function fundAndCancel(bytes32 jobId, uint64 deadline) external payable {
        escrow.createJob{value: msg.value}(jobId, bytes32(0), deadline, 0);
        escrow.cancelJob(jobId);
    }

    function setRefuse(bool value) external {
        refuse = value;
    }

    function attack() external {
        escrow.withdraw();
    }

    receive() external payable {
        require(!refuse, "refused");
        received += msg.value;
        try escrow.withdraw() {
            reentered = true;
        } catch (bytes memory err) {
            lastError = err;
        }
    }
}
