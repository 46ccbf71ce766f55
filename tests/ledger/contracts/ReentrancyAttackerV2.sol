// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.28;

interface IFedSwarmEscrowV2 {
    struct JobTerms {
        address operator;
        uint64 deadline;
        uint64 settleWindow;
        uint64 claimWindow;
        uint128 priceCap;
        uint32 unitBudget;
    }
    struct TrainerTerms {
        address trainer;
        uint128 price;
        uint32 units;
    }
    function fund(uint256 nonce, JobTerms calldata terms, TrainerTerms[] calldata trainers) external payable returns (bytes32);
    function cancel(bytes32 jobKey) external;
    function withdraw() external;
}

/// Test helper: pays for a job with no trainers, cancels it (the free escrow is refunded at
/// once) and tries to re-enter withdraw() from its receive hook (or refuses the payment).
contract ReentrancyAttackerV2 {
    IFedSwarmEscrowV2 public immutable escrow;
    uint256 public received;
    bool public reentered;
    bytes public lastError;
    bool public refuse;

    constructor(address escrow_) {
        escrow = IFedSwarmEscrowV2(escrow_);
    }

    function fundAndCancel(uint64 deadline, uint64 claimWindow) external payable {
        IFedSwarmEscrowV2.TrainerTerms[] memory none;
        bytes32 key = escrow.fund{value: msg.value}(
            1, IFedSwarmEscrowV2.JobTerms(address(this), deadline, 0, claimWindow, 0, 0), none
        );
        escrow.cancel(key);
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
