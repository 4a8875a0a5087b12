/*
 * cli: the command line.
 *
 * cli_parse() fills node.h's identity and the starting runtime knobs, and
 * returns where to listen. A usage error prints a line and a hint to stderr
 * and exits 2; --help prints the usage to stdout and exits 0. Call from main()
 * before any thread starts.
 */
#ifndef MOCKNODE_CLI_H
#define MOCKNODE_CLI_H

struct cli_options {
    const char *host;
    unsigned port; /* 0: an ephemeral port */
    unsigned threads;
};

struct cli_options cli_parse(int argc, char **argv);

/* Reports a usage error found after parsing (such as an unresolvable host) and exits 2. */
void cli_die_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#endif
