#!/usr/bin/perl
# Gearman::Worker (libgearman-client-perl) serving the interop functions; usage:
#   perl_worker.pl PORT LOGFILE
# Each job appends one JSON line {"fn", "arg" (hex of the first 64 bytes), "len"} to LOGFILE.
use strict;
use warnings;
use Gearman::Worker;
use JSON::PP;
use IO::Handle;
use Time::HiRes qw(sleep time);

my ($port, $logfile) = @ARGV;
open(my $log, ">>", $logfile) or die "cannot open $logfile: $!";
$log->autoflush(1);
# GEARMAN_INTEROP_PREFIX namespaces the functions (Gearman::Objects prefix: "PREFIX\tfn")
my $prefix = $ENV{GEARMAN_INTEROP_PREFIX};
my $worker = Gearman::Worker->new(job_servers => ["127.0.0.1:$port"],
                                  client_id => "perl-interop-worker",
                                  ($prefix ? (prefix => $prefix) : ()));
my $json = JSON::PP->new->canonical;

sub logged {
    my ($fn, $code) = @_;
    return sub {
        my $job = shift;
        my $arg = $job->arg;
        print $log $json->encode({fn => $fn, arg => unpack("H*", substr($arg, 0, 64)),
                                  len => length($arg)}), "\n";
        return $code->($job, $arg);
    };
}

my %functions = (
    reverse => sub { return scalar reverse $_[1] },
    echo    => sub { return $_[1] },
    progress => sub {
        my ($job) = @_;
        $job->set_status(1, 3);
        $worker->send_work_data($job, "d1");
        $worker->send_work_warning($job, "w1");
        $job->set_status(2, 3);
        $worker->send_work_data($job, "d2");
        return "done";
    },
    fail      => sub { return undef },    # undef result: WORK_FAIL
    exception => sub {
        my ($job) = @_;
        $worker->send_work_exception($job, "boom");
        return undef;
    },
    gate => sub {
        my ($job, $path) = @_;
        $job->set_status(1, 2);
        my $deadline = time + 20;
        sleep 0.02 until -e $path || time > $deadline;
        return "opened";
    },
);
for my $fn (sort keys %functions) {
    $worker->register_function($fn => logged($fn, $functions{$fn}));
}
$worker->work while 1;
