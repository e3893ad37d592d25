#!/bin/sh
# The guest's side of TestKernelUserdata (kernel612_test.go), run by the
# kernel rig's /init as lg.mode=script in Debian's 6.12 kernel, the first
# here with netconsole userdata. lastgasp (a static build) is /bin/lastgasp.
# Lines for the test start with "lg-"; the collector's tap has 10.99.0.1.

insmod /lib/modules/netconsole.ko || echo "lg-guest: insmod netconsole failed"
/bin/lastgasp netconsole-setup --collector 10.99.0.1 --node-name worker-612 >/tmp/out 2>&1
echo "lg-setup: exit $?"
sed 's/^/lg-setup: /' /tmp/out

# What the kernel made of it: the target's attributes and userdata.
d=/sys/kernel/config/netconsole/lastgasp-10.99.0.1
echo "lg-target: enabled=$(cat $d/enabled) extended=$(cat $d/extended) release=$(cat $d/release 2>/dev/null)" \
	"node=$(cat $d/userdata/node/value 2>/dev/null)"
ls $d/userdata | sed 's/^/lg-userdata: /'

i=0
while [ $i -lt 20 ]; do
	echo "lg-noise: ordinary kernel line $i from a healthy node" >/dev/kmsg
	i=$((i + 1))
	sleep 0.05
done
# Under TCG the guest's virtio queue drains at qemu's pace, and netpoll
# drops what does not fit (it cannot wait): let it drain before the
# panic's own burst.
sleep 1
# One record too long for a datagram with its release and userdata (over
# 1000 bytes; /dev/kmsg takes at most 976): netconsole sends it in
# fragments, the userdata once, in the last one's share of the body.
long=$(printf '%0950d' 0 | tr 0 y)
echo "lg-long: $long" >/dev/kmsg
sleep 1
echo c >/proc/sysrq-trigger
