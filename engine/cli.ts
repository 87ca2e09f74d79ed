#!/usr/bin/env node
/**
 * The `blockmirror` command. Each subcommand answers `--help`, exits
 * non-zero with a one-line message on bad arguments, and stops cleanly on
 * SIGTERM and SIGINT.
 */
import { BlockmirrorError, errors } from './errors.ts';
import { codesCommand } from './cli-codes.ts';
import { primaryCommand } from './cli-primary.ts';
import { secondaryCommand } from './cli-secondary.ts';
import { statusCommand } from './cli-status.ts';
import { demoCommand } from './cli-demo.ts';
import { benchCommand } from './cli-bench.ts';
import { controllerCommand } from './cli-controller.ts';
import { operatorCommand } from './cli-operator.ts';
import { roleCommand } from './cli-roles.ts';

const usage = `Usage: blockmirror <command> [options]

A block-storage engine that mirrors every write to a secondary.

Commands:
  demo       run a local mirror pair end to end and check it byte for byte
  secondary  receive mirrored writes and apply them to DIR/NAME.img
  primary    serve volumes and mirror every write to a secondary
  controller join primaries into a consistency group, frozen together on a failure
  status     show a primary's pairs, or a controller's group, through its control endpoint
  freeze     freeze a consistency group (or one primary) now
  run        release the writes of a frozen group
  verify     compare the codes of a live pair and resync what differs
  promote    failover: turn a secondary's copies into primary volumes
  demote     planned swap: turn in-sync primary volumes into secondary copies
  swap       planned swap of a stopped pair on this machine (demote + promote)
  codes      print the segment codes of an image file
  bench      run the benchmark suites beside their outside references

Options:
  -h, --help     show this help (also: blockmirror <command> --help)
  -V, --version  print the version

See README.md for the library API and docs/errors.md for error codes.
`;

export const version = '0.1.0';

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === '-h' || command === '--help' || command === 'help') {
    process.stdout.write(usage);
    return command === undefined ? 2 : 0;
  }
  if (command === '-V' || command === '--version') {
    process.stdout.write(`blockmirror ${version}\n`);
    return 0;
  }
  switch (command) {
    case 'codes':
      return codesCommand(rest);
    case 'secondary':
      return secondaryCommand(rest);
    case 'demo':
      return demoCommand(rest);
    case 'bench':
      return benchCommand(rest);
    case 'primary':
      return primaryCommand(rest);
    case 'status':
      return statusCommand(rest);
    case 'controller':
      return controllerCommand(rest);
    case 'freeze':
    case 'run':
    case 'verify':
      return operatorCommand(command, rest);
    case 'promote':
    case 'demote':
    case 'swap':
      return roleCommand(command, rest);
    default:
      throw errors.USAGE(`Unknown command '${command}' (see blockmirror --help)`);
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    const e = err instanceof BlockmirrorError ? err : undefined;
    process.stderr.write(`blockmirror: ${e ? `${e.message} [${e.code}]` : String(err?.stack ?? err)}\n`);
    process.exitCode = e?.code === 'BM_ERR_USAGE' ? 2 : 1;
  },
);
