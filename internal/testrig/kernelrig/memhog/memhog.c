// memhog: take all the memory there is, for the kernel rig's oom mode.
//
// Built static (gcc -static -O2) into the rig's initramfs as /bin/memhog.
// It allocates memory 1 MiB at a time and writes every page, so the pages
// are really used, until the kernel's OOM killer acts: with
// vm.panic_on_oom=1 the kernel panics ("Kernel panic - not syncing: Out of
// memory: system-wide panic_on_oom is enabled") after its "memhog invoked
// oom-killer" report; with vm.panic_on_oom=0 it kills the biggest task,
// memhog itself ("Out of memory: Killed process <pid> (memhog) ..."), and
// goes on.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(void)
{
	const size_t chunk = 1 << 20;
	size_t total = 0;

	for (;;) {
		char *p = malloc(chunk);
		if (p == NULL) {
			// Overcommit refused: what was taken stays taken; wait
			// for the OOM killer.
			fprintf(stderr, "memhog: malloc failed after %zu MiB\n", total >> 20);
			for (;;)
				pause();
		}
		memset(p, 0x5a, chunk);
		total += chunk;
		if (total % (64 << 20) == 0)
			fprintf(stderr, "memhog: %zu MiB\n", total >> 20);
	}
}
