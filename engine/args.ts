/**
 * A small command-line parser shared by every subcommand: `--name value`,
 * `--name=value`, repeatable options, boolean flags, and one-line
 * BM_ERR_USAGE errors for anything it does not know.
 */
import { errors } from './errors.ts';

export interface OptionSpec {
  /** Takes a value (default) or is a boolean flag. */
  flag?: boolean;
  /** May be given more than once; the values are collected in order. */
  repeat?: boolean;
  required?: boolean;
}

export type Parsed = Record<string, string | string[] | boolean | undefined>;

export function parseArgs(command: string, argv: string[], spec: Record<string, OptionSpec>): Parsed {
  const out: Parsed = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '-h') {
      out.help = true;
      continue;
    }
    if (!arg.startsWith('--')) throw errors.USAGE(`${command}: unexpected argument '${arg}' (see blockmirror ${command} --help)`);
    const eq = arg.indexOf('=');
    const name = arg.slice(2, eq < 0 ? undefined : eq);
    const option = name === 'help' ? { flag: true } : spec[name];
    if (!option) throw errors.USAGE(`${command}: unknown option '--${name}' (see blockmirror ${command} --help)`);
    let value: string | boolean;
    if (option.flag) {
      if (eq >= 0) throw errors.USAGE(`${command}: option '--${name}' takes no value`);
      value = true;
    } else if (eq >= 0) {
      value = arg.slice(eq + 1);
    } else {
      if (i + 1 >= argv.length) throw errors.USAGE(`${command}: option '--${name}' needs a value`);
      value = argv[++i]!;
    }
    if (option.repeat) ((out[name] ??= []) as string[]).push(value as string);
    else if (out[name] !== undefined) throw errors.USAGE(`${command}: option '--${name}' was given twice`);
    else out[name] = value;
  }
  if (!out.help) {
    for (const [name, option] of Object.entries(spec)) {
      if (option.required && out[name] === undefined) throw errors.USAGE(`${command}: missing required option '--${name}' (see blockmirror ${command} --help)`);
    }
  }
  return out;
}

/** Reads a duration: a number with `ms`, `s` or `m` (seconds when bare), as whole milliseconds. */
export function parseDuration(text: string, what: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(text.trim());
  const ms = m ? Math.round(Number(m[1]) * (m[2] === 'ms' ? 1 : m[2] === 'm' ? 60_000 : 1000)) : NaN;
  if (!(ms >= 1 && ms <= 24 * 3600 * 1000)) throw errors.USAGE(`${what}: cannot read duration '${text}': write e.g. 30s, 500ms or 2m (1 ms to 24 h)`);
  return ms;
}
