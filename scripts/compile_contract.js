#!/usr/bin/env node
// Compile contracts/*.sol with npm `solc` (solcjs) through the standard-JSON interface and write
// a Python-friendly artifact (ABI, bytecode, compiler version, settings, source sha256).
//
// Usage: node scripts/compile_contract.js [--solc PATH/solc] [--source FILE.sol] [--name NAME]
//                                         [--out FILE.json] [--check]
// Defaults compile contracts/FedSwarmEscrow.sol into src/fedswarm/ledger/artifacts/.
// `--check` compiles and compares with the existing artifact instead of writing (exit 1 if not
// identical). The CLI of solcjs has no --evm-version flag, hence standard JSON.
"use strict";

const crypto = require("crypto");
const fs = require("fs");
const path = require("path");

const ROOT = path.resolve(__dirname, "..");

// One place for the compiler settings: cancun because Hedera does not run prague/osaka yet.
const SETTINGS = {
  evmVersion: "cancun",
  optimizer: { enabled: true, runs: 200 },
  outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
};

function parseArgs(argv) {
  const args = {
    solc: path.join(ROOT, ".tools", "node_modules", "solc"),
    source: path.join(ROOT, "contracts", "FedSwarmEscrow.sol"),
    name: null,
    out: null,
    check: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--check") args.check = true;
    else if (["--solc", "--source", "--name", "--out"].includes(a) && i + 1 < argv.length) {
      args[a.slice(2)] = path.resolve(argv[++i]);
      if (a === "--name") args.name = path.basename(argv[i]);
    } else {
      console.error(`compile_contract: unknown argument ${a}`);
      process.exit(2);
    }
  }
  args.name = args.name || path.basename(args.source, ".sol");
  args.out = args.out || path.join(ROOT, "src", "fedswarm", "ledger", "artifacts", `${args.name}.json`);
  return args;
}

function main() {
  const args = parseArgs(process.argv.slice(2));
  let solc;
  try {
    solc = require(args.solc);
  } catch (e) {
    console.error(`compile_contract: solc not found at ${args.solc}: run \`make tools\``);
    process.exit(2);
  }
  const source = fs.readFileSync(args.source, "utf8");
  const fileName = path.basename(args.source);
  const input = { language: "Solidity", sources: { [fileName]: { content: source } }, settings: SETTINGS };
  const output = JSON.parse(solc.compile(JSON.stringify(input)));
  const errors = (output.errors || []).filter((e) => e.severity === "error");
  for (const e of output.errors || []) console.error(e.formattedMessage.trim());
  if (errors.length) process.exit(1);
  const contract = output.contracts[fileName][args.name];
  if (!contract) {
    console.error(`compile_contract: no contract ${args.name} in ${fileName}`);
    process.exit(1);
  }
  const artifact = {
    contractName: args.name,
    sourceFile: path.relative(ROOT, args.source),
    sourceSha256: crypto.createHash("sha256").update(source).digest("hex"),
    compiler: { name: "solc", version: solc.version() },
    settings: { evmVersion: SETTINGS.evmVersion, optimizer: SETTINGS.optimizer },
    abi: contract.abi,
    bytecode: "0x" + contract.evm.bytecode.object,
    deployedBytecode: "0x" + contract.evm.deployedBytecode.object,
  };
  const text = JSON.stringify(artifact, null, 2) + "\n";
  if (args.check) {
    const old = fs.existsSync(args.out) ? fs.readFileSync(args.out, "utf8") : "";
    if (old !== text) {
      console.error(`compile_contract: ${path.relative(ROOT, args.out)} is stale: run \`make contracts\``);
      process.exit(1);
    }
    console.log(`compile_contract: ${path.relative(ROOT, args.out)} is up to date`);
    return;
  }
  fs.mkdirSync(path.dirname(args.out), { recursive: true });
  fs.writeFileSync(args.out, text);
  const size = (contract.evm.deployedBytecode.object.length / 2) | 0;
  console.log(`compile_contract: wrote ${path.relative(ROOT, args.out)} (${size} bytes deployed)`);
}

main();
