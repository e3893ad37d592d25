#!/bin/sh
# The guest's side of TestKernel (kernel_test.go), run by the kernel rig's
# /init as lg.mode=script. lastgasp (a static build) is /bin/lastgasp.
# Every line for the test starts with "lg-"; the test reads them from the
# serial console. The collector's tap has 10.99.0.1 and fd00:99::1; it is
# also the gateway to 10.98.0.0/24.

# step NAME ARGS...: one netconsole-setup run, its exit status and output.
step() {
	name=$1
	shift
	/bin/lastgasp netconsole-setup --node-name guest "$@" >/tmp/out 2>&1
	echo "lg-$name: exit $?"
	sed "s/^/lg-$name: /" /tmp/out
}

# No netconsole yet: one line, exit 1.
step nomod --collector 10.99.0.1

# The module loaded bare: no target from the command line.
insmod /lib/modules/netconsole.ko || echo "lg-guest: insmod netconsole failed"
ip route add 10.98.0.0/24 via 10.99.0.1

# No route: one line, exit 1, nothing made.
step noroute --collector 10.97.0.1

# An IPv4 and an IPv6 collector on the link, and one behind the gateway.
step first --collector 10.99.0.1,fd00:99::1,10.98.0.5
# Someone else's target: never touched.
mkdir /sys/kernel/config/netconsole/other
# Again: nothing changes.
step again --collector 10.99.0.1,fd00:99::1,10.98.0.5
# Another port, one collector gone: two rewritten, one removed.
step port --collector 10.99.0.1,fd00:99::1 --port 6667
# Back: two rewritten, one made again.
step back --collector 10.99.0.1,fd00:99::1,10.98.0.5

ls /sys/kernel/config/netconsole | sed 's/^/lg-ls: /'
for d in /sys/kernel/config/netconsole/lastgasp-*; do
	echo "lg-target: $(basename "$d") $(cat "$d/enabled") $(cat "$d/extended") $(cat "$d/dev_name")" \
		"$(cat "$d/local_ip") $(cat "$d/remote_ip") $(cat "$d/remote_port") $(cat "$d/remote_mac")"
done

echo c >/proc/sysrq-trigger
