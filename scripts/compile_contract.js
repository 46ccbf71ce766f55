#!/usr/bin/env node
// Compile contracts/*.sol with npm `solc` (solcjs) through the standard-JSON interface and write
// a Python-friendly artifact (ABI, bytecode, compiler version, settings, source sha256).
//
// Usage: node scripts/compile_contract.js [--solc PATH/solc] [--source FILE.sol] [--name NAME]
//                                         [--out FILE.json] [--check]
// Without --source it compiles every contract in CONTRACTS (v1 and v2 of the escrow) into
// src/fedswarm/ledger/artifacts/. `--check` compiles and compares with the existing artifact(s)
// instead of writing (exit 1 if any differs). The CLI of solcjs has no --evm-version flag, hence
// standard JSON. Imports of `@openzeppelin/contracts/...` are read from the pinned npm package
// in .tools/node_modules (tools/package.json) through solc's import callback; its version is
// recorded in the artifact.
"use strict";

const crypto = require("crypto");
const fs = require("fs");
const path = require("path");

const ROOT = path.resolve(__dirname, "..");
const MODULES = path.join(ROOT, ".tools", "node_modules");
const CONTRACTS = ["FedSwarmEscrow.sol", "FedSwarmEscrowV2.sol"];

// One place for the compiler settings: cancun because Hedera does not run prague/osaka yet.
const SETTINGS = {
  evmVersion: "cancun",
  optimizer: { enabled: true, runs: 200 },
  outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
};

function parseArgs(argv) {
  const args = { solc: path.join(MODULES, "solc"), source: null, name: null, out: null, check: false };
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
  return args;
}

// Library imports resolve only inside node_modules (never elsewhere on disk); every library
// used is noted so the artifact can record its version.
function importer(used) {
  return (importPath) => {
    const pkg = importPath.startsWith("@") ? importPath.split("/").slice(0, 2).join("/") : importPath.split("/")[0];
    const file = path.resolve(MODULES, importPath);
    if (!file.startsWith(MODULES + path.sep) || !fs.existsSync(file)) {
      return { error: `${importPath} not found under .tools/node_modules: run \`make tools\`` };
    }
    const meta = JSON.parse(fs.readFileSync(path.join(MODULES, pkg, "package.json"), "utf8"));
    used[pkg] = meta.version;
    return { contents: fs.readFileSync(file, "utf8") };
  };
}

function compileOne(solc, sourcePath, name, out, check) {
  const source = fs.readFileSync(sourcePath, "utf8");
  const fileName = path.basename(sourcePath);
  const input = { language: "Solidity", sources: { [fileName]: { content: source } }, settings: SETTINGS };
  const used = {};
  const output = JSON.parse(solc.compile(JSON.stringify(input), { import: importer(used) }));
  const errors = (output.errors || []).filter((e) => e.severity === "error");
  for (const e of output.errors || []) console.error(e.formattedMessage.trim());
  if (errors.length) return false;
  const contract = (output.contracts[fileName] || {})[name];
  if (!contract) {
    console.error(`compile_contract: no contract ${name} in ${fileName}`);
    return false;
  }
  const artifact = {
    contractName: name,
    sourceFile: path.relative(ROOT, sourcePath),
    sourceSha256: crypto.createHash("sha256").update(source).digest("hex"),
    compiler: { name: "solc", version: solc.version() },
    settings: { evmVersion: SETTINGS.evmVersion, optimizer: SETTINGS.optimizer },
  };
  // Only contracts with imports carry the field, so v1's artifact stays byte for byte as it was.
  if (Object.keys(used).length) artifact.libraries = Object.fromEntries(Object.entries(used).sort());
  Object.assign(artifact, {
    abi: contract.abi,
    bytecode: "0x" + contract.evm.bytecode.object,
    deployedBytecode: "0x" + contract.evm.deployedBytecode.object,
  });
  const text = JSON.stringify(artifact, null, 2) + "\n";
  if (check) {
    const old = fs.existsSync(out) ? fs.readFileSync(out, "utf8") : "";
    if (old !== text) {
      console.error(`compile_contract: ${path.relative(ROOT, out)} is stale: run \`make contracts\``);
      return false;
    }
    console.log(`compile_contract: ${path.relative(ROOT, out)} is up to date`);
    return true;
  }
  fs.mkdirSync(path.dirname(out), { recursive: true });
  fs.writeFileSync(out, text);
  const size = (contract.evm.deployedBytecode.object.length / 2) | 0;
  console.log(`compile_contract: wrote ${path.relative(ROOT, out)} (${size} bytes deployed)`);
  return true;
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
  const sources = args.source ? [args.source] : CONTRACTS.map((f) => path.join(ROOT, "contracts", f));
  let ok = true;
  for (const src of sources) {
    const name = (args.source && args.name) || path.basename(src, ".sol");
    const out = (args.source && args.out) || path.join(ROOT, "src", "fedswarm", "ledger", "artifacts", `${name}.json`);
    ok = compileOne(solc, src, name, out, args.check) && ok;
  }
  if (!ok) process.exit(1);
}

main();
